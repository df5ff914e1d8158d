"""The throughput benchmark (keepmix.benchmark_policies) on tiny sizes: rows, loop protocol, table, CLI."""

from __future__ import annotations

import math

import pytest
import torch

from keepmix import benchmark_policies as bp

TINY = [(8, 3, 16, 16), (4, 3, 12, 12)]
SOME_OPS = ["TrivialAugmentWide", "KeepAutoAugment", "Cutout", "KeepCutout", "Mixup", "GuidedMixup", "SnapMix",
            "ManifoldMixup"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP threads contend and tiny convs take 100× longer."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_rows():
    return bp.run(TINY, SOME_OPS, device="cpu", repeats=2, warmup=1, loop_images=6)


def test_every_requested_op_and_size_has_positive_numbers(tiny_rows):
    assert [(r["op"], r["size"]) for r in tiny_rows] == [(op, s) for s in TINY for op in SOME_OPS]
    for row in tiny_rows:
        for key in ("batched_ips", "loop_ips", "speedup"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["op"], key)
        assert row["speedup"] == pytest.approx(row["batched_ips"] / row["loop_ips"])
        assert row["group"] == bp.OPS[row["op"]].group


def test_loop_image_count_is_capped_and_even_for_mixers(tiny_rows):
    for row in tiny_rows:
        batch = row["size"][0]
        expected = min(batch, 6)  # 6 for B = 8, 4 for B = 4: both even already
        assert row["loop_images"] == expected


def test_loop_reference_calls_the_op_per_image_and_per_pair(monkeypatch):
    """A spy op records the batch sizes it is called with: whole batch, then 1 (or 2 for mixers) at a time."""
    calls = {"policy": [], "mixer": []}

    def spy(group):
        def build(setting):
            def call(x, y, maps):
                assert x.shape[0] == y.shape[0] == maps.shape[0]
                assert x.dtype == (torch.uint8 if group == "policy" else torch.float32)
                calls[group].append(x.shape[0])
            return call
        return build

    monkeypatch.setitem(bp.OPS, "SpyPolicy", bp.OpSpec("SpyPolicy", "policy", spy("policy")))
    monkeypatch.setitem(bp.OPS, "SpyMixer", bp.OpSpec("SpyMixer", "mixer", spy("mixer")))
    rows = bp.run([(7, 3, 8, 8)], ["SpyPolicy", "SpyMixer"], device="cpu", repeats=3, warmup=1, loop_images=5)
    runs = 3 + 1
    # policy: 4 batched calls of 7, then 4 loops of 5 single images
    assert calls["policy"] == [7] * runs + [1] * (5 * runs)
    # mixer: 5 images round down to 4 = 2 disjoint pairs per loop
    assert calls["mixer"] == [7] * runs + [2] * (2 * runs)
    assert [r["loop_images"] for r in rows] == [5, 4]
    # whole batch when loop_images is None
    calls["policy"].clear()
    bp.run([(3, 3, 8, 8)], ["SpyPolicy"], device="cpu", repeats=1, warmup=0, loop_images=None)
    assert calls["policy"] == [3, 1, 1, 1]


def test_format_table_lists_every_row(tiny_rows):
    text = bp.format_table(tiny_rows, "cpu (2 threads)")
    lines = text.splitlines()
    assert lines[0] == "device: cpu (2 threads)"
    header = next(line for line in lines if line.startswith("op "))
    for column in ("size", "batched img/s", "loop img/s", "speed-up"):
        assert column in header
    body = [line for line in lines if line.split()[:1] and line.split()[0] in SOME_OPS]
    assert len(body) == len(tiny_rows)
    for line, row in zip(body, tiny_rows):
        assert line.split()[0] == row["op"]
        assert "×".join(map(str, row["size"])) in line
        assert f"{row['speedup']:.1f}×" in line


def test_main_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        bp.main(["--help"])
    assert info.value.code == 0
    assert "--loop-images" in capsys.readouterr().out


def test_main_prints_a_table(capsys):
    assert bp.main(["--sizes", "4x3x8x8", "--ops", "Cutout", "CutMix", "--repeats", "1", "--warmup", "0",
                    "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: cpu")
    assert any(line.startswith("Cutout") and "4×3×8×8" in line for line in out.splitlines())
    assert any(line.startswith("CutMix") for line in out.splitlines())


@pytest.mark.parametrize("argv", [["--sizes", "4x3x8"], ["--sizes", "1x3x8x8"], ["--sizes", "4x1x8x8"],
                                  ["--ops", "NoSuchOp"]])
def test_main_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as info:
        bp.main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("kwargs, error, words", [
    ({"ops": ["NoSuchOp"]}, ValueError, "NoSuchOp"),
    ({"ops": "Cutout"}, TypeError, "ops"),
    ({"sizes": [(1, 3, 8, 8)]}, ValueError, "B >= 2"),
    ({"sizes": [(4, 3, 8)]}, TypeError, "sizes"),
    ({"sizes": []}, ValueError, "sizes"),
    ({"repeats": 0}, ValueError, "repeats"),
    ({"warmup": -1}, ValueError, "warmup"),
    ({"loop_images": 0}, ValueError, "loop_images"),
])
def test_run_rejects_bad_input(kwargs, error, words):
    args = {"sizes": [(4, 3, 8, 8)], "ops": ["Cutout"], "device": "cpu", "repeats": 1, "warmup": 0, **kwargs}
    with pytest.raises(error, match=words):
        bp.run(**args)
