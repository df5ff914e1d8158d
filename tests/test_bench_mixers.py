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
