"""The saliency-memory evidence scripts: glyph masks through the batch geometry, Spearman's ρ by hand, and a
tiny end-to-end run of the fidelity and staleness experiments."""

from __future__ import annotations

import csv

import pytest
import torch

from keepmix.data import identity_geometry, random_crop_flip
from keepmix.memory_study import main, masks_on_grid, rank_correlation


def test_masks_follow_the_batch_geometry_pixel_by_pixel():
    masks = torch.rand(6, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.4
    images = masks.unsqueeze(1).to(torch.uint8)
    out, geometry = random_crop_flip(images, 2, torch.Generator().manual_seed(1),
                                     geometry=identity_geometry(torch.arange(6), (5, 7)))
    assert torch.equal(masks_on_grid(masks, geometry), out[:, 0].bool())  # zero padding shows no glyph


def test_rank_correlation_by_hand():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert rank_correlation(a, a * 10 + 3).item() == pytest.approx(1.0)
    assert rank_correlation(a, -a).item() == pytest.approx(-1.0)
    b = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])   # ranks 0 2 1 3 against 0 1 2 3: ρ = 1 − 6·2/(4·15) = 0.8
    assert rank_correlation(a, b).item() == pytest.approx(0.8)


@pytest.mark.slow
def test_fidelity_and_staleness_run_end_to_end_on_a_tiny_set(tmp_path, capsys):
    tiny = ["--set", "data.kwargs.n_per_class=4", "--set", "optim.batch_size=20", "--set", "data.eval_size=20",
            "--set", "optim.warmup_epochs=0", "--out", str(tmp_path), "--quiet"]
    assert main(["fidelity", "--seeds", "0", "1", "--epochs", "2", *tiny]) == 0
    table = (tmp_path / "fidelity" / "fidelity.md").read_text()
    for arm in ("| cutout |", "| keep_cutout |", "| keep_cutout_memory |", "criterion removed"):
        assert arm in table
    rows = list(csv.DictReader(open(tmp_path / "fidelity" / "fidelity.csv")))
    assert len(rows) == 2 * 3 * 2 and all(0.0 <= float(r["study.glyph_removed"]) <= 1.0 for r in rows)
    assert main(["staleness", "--seeds", "0", "--epochs", "2", "--probe", "16", *tiny]) == 0
    assert (tmp_path / "staleness" / "staleness.png").stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "staleness" / "staleness.csv")))
    assert -1.0 <= float(rows[1]["study.rank_memory"]) <= 1.0 and rows[1]["study.rank_fresh_drift"]
