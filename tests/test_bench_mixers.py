"""GuidedMixup's Table 2 benchmark (keepmix.benchmark_mixers) on the smallest settings: every mixer runs, tables."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("scipy")

from keepmix import benchmark_mixers as bm  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_every_mixer_is_timed_and_printed_beside_the_paper():
    results = bm.run(batch_sizes=(4,), models=("resnet18",), device="cpu", repeats=1, warmup=0, num_classes=10,
                     image_size=16)
    row = results["CIFAR ResNet-18"][4]
    assert set(row) == {"step_s", *bm.PAPER_OVERHEAD}
    assert all(v > 0 for v in row.values())
    text = bm.format_table(results, "cpu")
    markdown = bm.format_table(results, "cpu", markdown=True)
    for name in bm.PAPER_OVERHEAD:
        assert name in text and f"| {name} |" in markdown
    assert "| keepmix B=4 |" in markdown and "paper B=4" in markdown


def test_paper_figures_are_guidedmixup_table_2():
    assert bm.PAPER_OVERHEAD["PuzzleMix"] == (138.5, 139.9, 134.1)
    assert bm.PAPER_OVERHEAD["Co-Mixup"] == (292.1, 490.2, 716.6)
    assert bm._paper("Guided-SR", 64) == "7" and bm._paper("Guided-SR", 8) == "-"


def test_overheads_csv_feeds_the_overhead_figure(tmp_path):
    import csv
    results = {"CIFAR ResNet-18": {16: {"step_s": 0.1, "Mixup": 1.0, "PuzzleMix": 60.0},
                                   64: {"step_s": 0.4, "Mixup": 0.5, "PuzzleMix": 70.0}}}
    path = bm.write_overheads(results, tmp_path / "overheads.csv")
    with open(path, newline="") as handle:
        rows = {r["arm"]: r for r in csv.DictReader(handle)}
    assert {a: float(r["overhead_percent"]) for a, r in rows.items()} == {"vanilla": 0.0, "mixup": 0.5,
                                                                         "puzzle_mix": 70.0}
    assert rows["mixup"]["batch"] == "64"
    assert float(next(r for a, r in rows.items() if a == "puzzle_mix")["overhead_percent"]) == 70.0
    small = bm.write_overheads(results, tmp_path / "small.csv", batch=16)
    assert "puzzle_mix,60.000" in small.read_text()
    with pytest.raises(ValueError, match="batch"):
        bm.write_overheads(results, tmp_path / "x.csv", batch=32)
    assert set(bm.ARM_NAMES) == set(bm.PAPER_OVERHEAD)
