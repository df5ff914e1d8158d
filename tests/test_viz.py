"""Pictures: display conversion, map scaling, the image grid and the training curves."""

from __future__ import annotations

import math

import matplotlib.image
import pytest
import torch

from keepmix.viz import plot_curves, read_metrics, save_grid, scale_maps, to_display


def test_to_display_uint8_is_divided_by_255():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = to_display(images)
    assert out.shape == (1, 1, 1, 3)
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.2, 1.0]))


def test_to_display_undoes_normalisation_and_clips():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.1, 0.5)
    pixels = torch.tensor([0.1, 0.9, 0.3]).view(1, 3, 1, 1)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(to_display(normalised, mean, std).flatten(), pixels.flatten(), atol=1e-6)
    assert to_display(torch.full((1, 1, 2, 2), 7.0)).max() == 1.0
    assert to_display(torch.full((1, 1, 2, 2), -3.0)).min() == 0.0
    with pytest.raises(ValueError, match="channels"):
        to_display(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="B×C×H×W"):
        to_display(torch.zeros(2, 2, 2))


def test_scale_maps_is_min_max_per_map_and_flat_maps_are_black():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[4.0, 4.0], [4.0, 4.0]]])
    scaled = scale_maps(maps)
    assert torch.allclose(scaled[0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(scaled[1], torch.zeros(2, 2))


def test_save_grid_layout_and_errors(tmp_path):
    images = torch.rand(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8)
    path = save_grid([("a", images), ("map", maps), ("b", (images * 255).to(torch.uint8))], tmp_path / "g.png",
                     row_labels=["x", "y", "z"], cell_inches=1.0, dpi=50)
    picture = matplotlib.image.imread(path)
    assert picture.shape[:2] == (150, 150)   # 3 rows × 3 columns of 1-inch cells at 50 dpi
    with pytest.raises(ValueError, match="rows"):
        save_grid([("a", images), ("b", images[:2])], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="row_labels"):
        save_grid([("a", images)], tmp_path / "bad.png", row_labels=["x"])
    with pytest.raises(ValueError, match="at least one"):
        save_grid([], tmp_path / "bad.png")


def test_plot_curves_single_and_several_runs(tmp_path):
    rows = [{"epoch": 1, "train_loss": 2.0, "train_acc": 10.0, "val_loss": 1.9, "val_top1": 12.0},
            {"epoch": 2, "train_loss": 1.5, "train_acc": 30.0, "val_loss": math.nan, "val_top1": None}]
    assert plot_curves(rows, tmp_path / "one.png").stat().st_size > 1000
    assert plot_curves({"a": rows, "b": rows[:1]}, tmp_path / "two.png", title="cmp").is_file()
    with pytest.raises(ValueError, match="at least one"):
        plot_curves([], tmp_path / "none.png")


def test_read_metrics_parses_numbers_and_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_top1\n1,2.5,\n2,1.25,40\n")
    rows = read_metrics(path)
    assert rows[0]["epoch"] == 1.0 and rows[0]["train_loss"] == 2.5 and math.isnan(rows[0]["val_top1"])
    assert rows[1]["val_top1"] == 40.0


def test_curve_legend_tells_train_dashed_from_eval_solid(tmp_path, monkeypatch):
    from keepmix import viz
    figures = []
    monkeypatch.setattr(viz, "_save", lambda figure, path, dpi: figures.append(figure) or path)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc": 10.0 * e, "val_top1": 9.0 * e}
            for e in (1, 2, 3)]
    viz.plot_curves({"cutout": rows, "keep_cutout": rows}, tmp_path / "x.png")
    loss_ax, acc_ax = figures[0].axes
    for ax, eval_name in ((loss_ax, "eval (solid)"), (acc_ax, "eval top-1 (solid)")):
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == ["train (dashed)", eval_name, "cutout", "keep_cutout"]
        train, evaluation = legend.legend_handles[:2]
        assert train.get_linestyle() != evaluation.get_linestyle() and train.get_marker() != evaluation.get_marker()
        # each plotted curve carries the style its legend entry shows
        styles = {line.get_linestyle() for line in ax.get_lines()}
        assert styles == {train.get_linestyle(), evaluation.get_linestyle()}
    import matplotlib.pyplot as plt
    plt.close(figures[0])
