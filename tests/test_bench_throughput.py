"""benchmarks/throughput.py (keepmix.benchmark_throughput) on tiny settings, and the training-step format of the
overhead benchmark (AMP bf16 and channels-last on CUDA; 'not measured' without a GPU). No timing is asserted."""

from __future__ import annotations

import pytest
import torch

from keepmix.benchmark import step_format, training_step
from keepmix.benchmark_throughput import format_table, main, run, write_jpeg_folder


@pytest.mark.slow
def test_throughput_benchmark_writes_its_jpegs_and_measures_both_paths(tmp_path):
    pytest.importorskip("PIL")
    results = run(tmp_path, images=12, size=32, crop=24, batch_size=4, workers=1, batches=2, warmup=1, steps=1,
                  model="resnet_small")
    assert len(list((tmp_path / "train").rglob("*.jpg"))) == 12
    for path in ("stream", "memory"):
        row = results[path]
        assert row["images_per_s"] > 0 and row["step_s"] > 0 and 0 <= row["input_share"] <= 1
    table = format_table(results, "cpu", "resnet_small")
    assert "| stream (1 workers, random-resized crops) |" in table and "in memory" in table
    assert write_jpeg_folder(tmp_path, 12, 32) == tmp_path          # complete: not written again


def test_cuda_runs_without_a_gpu_print_not_measured(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--device", "cuda"]) == 0
    assert "not measured" in capsys.readouterr().out
    from keepmix.benchmark import main as overhead_main
    assert overhead_main(["--device", "cuda"]) == 0
    assert "not measured" in capsys.readouterr().out


def test_overhead_step_is_bf16_and_channels_last_on_cuda_by_default():
    assert step_format(torch.device("cuda"), None, None) == ("bf16", True)
    assert step_format(torch.device("cpu"), None, None) == ("none", False)
    assert step_format(torch.device("cuda"), "none", False) == ("none", False)
    with pytest.raises(ValueError, match="amp"):
        step_format(torch.device("cpu"), "int8", None)
    # the bf16 channels-last step trains on CPU too
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).to(memory_format=torch.channels_last)
    before = model[0].weight.detach().clone()
    training_step(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(2, 3, 8, 8),
                  torch.tensor([0, 1]), "bf16", True)()
    assert not torch.equal(before, model[0].weight)
