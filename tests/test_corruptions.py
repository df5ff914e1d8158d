"""Corruption evaluation: the on-the-fly corruptions against their definitions, CIFAR-C files written here in
the published layout, the errors and summaries against hand computations, and ``keepmix eval --corruptions``
end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from keepmix.corruptions import (NOISE_STD, REPLACE_FRACTION, gaussian_noise, imagenet_c, replace_pixels,
                                 replacement_count)
from keepmix.data.cifar_c import (ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CIFAR10_C, CIFAR100_C, EXTRA_CORRUPTIONS,
                                  load_cifar_c)
from keepmix.robustness import (Item, corruption_error, corruption_rows, parse_corruptions, relative_summary,
                                spec_tag)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- gaussian_noise

def test_noise_is_exactly_sigma_times_the_seeded_normal_draw_float():
    x = torch.full((3, 3, 8, 8), 0.5, dtype=torch.float32)
    out = gaussian_noise(x, 0.05, torch.Generator().manual_seed(7), clip=False)
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, x + 0.05 * n, rtol=0, atol=0)


def test_noise_uint8_is_255_sigma_rounded_and_clamped():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    out = gaussian_noise(x, 0.2, torch.Generator().manual_seed(3))
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    expected = (x.float() + n * (0.2 * 255.0)).round().clamp(0, 255).to(torch.uint8)
    assert out.dtype == torch.uint8 and torch.equal(out, expected)


def test_noise_statistics_and_clip():
    x = torch.full((4, 3, 64, 64), 0.5, dtype=torch.float64)
    out = gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.shape == x.shape
    d = out - x
    assert abs(float(d.mean())) < 3 * 0.1 / (d.numel() ** 0.5) * 3
    assert float(d.std()) == pytest.approx(0.1, rel=0.02)
    clipped = gaussian_noise(torch.ones(1, 3, 16, 16), 0.5, torch.Generator().manual_seed(1))
    assert float(clipped.max()) <= 1.0 and float(clipped.min()) >= 0.0 and float(clipped.min()) < 1.0


def test_noise_seeded_reproducible_and_zero_sigma_is_identity():
    x = torch.rand(2, 3, 6, 6)
    a = gaussian_noise(x, 0.1, torch.Generator().manual_seed(5))
    b = gaussian_noise(x, 0.1, torch.Generator().manual_seed(5))
    c = gaussian_noise(x, 0.1, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = gaussian_noise(x, 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(same, x) and same is not x


def test_noise_default_strength_is_the_documented_one():
    assert NOISE_STD == 0.1 and REPLACE_FRACTION == 0.5
    x = torch.full((1, 3, 8, 8), 0.5)
    torch.testing.assert_close(gaussian_noise(x, generator=torch.Generator().manual_seed(2), clip=False),
                               x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("bad, kind, word", [
    (dict(images=[[1.0]]), TypeError, "images"), (dict(images=torch.zeros(3, 4, 4)), ValueError, "images"),
    (dict(images=torch.zeros(1, 3, 4, 4, dtype=torch.int32)), TypeError, "images"),
    (dict(std=-0.1), ValueError, "std"), (dict(std="0.1"), TypeError, "std"), (dict(std=float("nan")), ValueError, "std"),
    (dict(generator=3), TypeError, "generator"), (dict(clip=1), TypeError, "clip")])
def test_noise_bad_arguments_name_the_argument(bad, kind, word):
    args = dict(images=torch.zeros(1, 3, 4, 4), std=0.1, generator=None, clip=True)
    args.update(bad)
    with pytest.raises(kind, match=word):
        gaussian_noise(args["images"], args["std"], args["generator"], clip=args["clip"])


# --------------------------------------------------------------------------- replace_pixels

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.77, 1.0])
def test_replacement_changes_exactly_round_p_hw_pixels_per_image_from_the_source(fraction):
    b, h, w = 5, 6, 7
    x = torch.zeros(b, 3, h, w)
    source = torch.ones(b, 3, h, w)
    out = replace_pixels(x, fraction, torch.Generator().manual_seed(0), source=source)
    replaced = out.eq(1).all(dim=1)  # every channel of a replaced pixel comes from the source
    kept = out.eq(0).all(dim=1)
    assert torch.equal(replaced | kept, torch.ones_like(replaced))
    k = replacement_count(fraction, h, w)
    assert k == round(fraction * h * w)
    assert replaced.flatten(1).sum(dim=1).tolist() == [k] * b


def test_replacement_without_source_takes_pixels_from_another_image_of_the_batch():
    b = 6
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 8, 8).contiguous()
    g = torch.Generator().manual_seed(4)
    out = replace_pixels(x, 0.5, g)
    # the shift t drawn first: image i takes pixels of image (i + t) mod B, t in 1..B-1
    t = int(torch.randint(1, b, (1,), generator=torch.Generator().manual_seed(4)))
    for i in range(b):
        values = set(out[i].unique().tolist())
        assert values == {float(i), float((i + t) % b)}
        assert (i + t) % b != i
        assert int(out[i, 0].eq((i + t) % b).sum()) == 32


def test_replacement_positions_are_uniform():
    # each of the 16 positions is replaced with probability k/16 = 0.25; 4000 images
    x = torch.zeros(4000, 1, 4, 4)
    out = replace_pixels(x, 0.25, torch.Generator().manual_seed(11), source=torch.ones_like(x))
    share = out.mean(dim=0).flatten()
    assert torch.all((share - 0.25).abs() < 0.03)


def test_replacement_uint8_exact_seeded_and_device_dtype_preserved():
    x = torch.randint(0, 256, (3, 3, 9, 9), dtype=torch.uint8)
    a = replace_pixels(x, 0.3, torch.Generator().manual_seed(8))
    b = replace_pixels(x, 0.3, torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and a.device == x.device and a.shape == x.shape and torch.equal(a, b)
    f = replace_pixels(x.double() / 255, 0.3, torch.Generator().manual_seed(8))
    assert f.dtype == torch.float64 and torch.equal((f * 255).round().to(torch.uint8), a)


def test_replacement_degenerate_cases():
    x = torch.rand(2, 3, 4, 4)
    src = torch.rand(2, 3, 4, 4)
    assert torch.equal(replace_pixels(x, 0.0, source=src), x)
    assert torch.equal(replace_pixels(x, 1.0, source=src), src)
    one = torch.rand(1, 3, 4, 4)
    assert torch.equal(replace_pixels(one, 1.0, source=src[:1]), src[:1])
    with pytest.raises(ValueError, match="images"):
        replace_pixels(one, 0.5)


@pytest.mark.parametrize("bad, kind, word", [
    (dict(fraction=1.5), ValueError, "fraction"), (dict(fraction=-0.1), ValueError, "fraction"),
    (dict(fraction="a"), TypeError, "fraction"), (dict(source=torch.zeros(2, 3, 4, 5)), ValueError, "source"),
    (dict(source=[1]), TypeError, "source"), (dict(source=torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), TypeError,
                                               "source"), (dict(generator="g"), TypeError, "generator"),
    (dict(images=torch.zeros(2, 3, 4)), ValueError, "images")])
def test_replacement_bad_arguments_name_the_argument(bad, kind, word):
    args = dict(images=torch.zeros(2, 3, 4, 4), fraction=0.5, generator=None, source=None)
    args.update(bad)
    with pytest.raises(kind, match=word):
        replace_pixels(args["images"], args["fraction"], args["generator"], source=args["source"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_corruptions_stay_on_the_batch_device_with_a_cpu_generator():
    x = torch.rand(4, 3, 8, 8, device="cuda")
    g = torch.Generator().manual_seed(0)
    noisy = gaussian_noise(x, 0.1, g, clip=False)
    assert noisy.device == x.device
    torch.testing.assert_close(noisy.cpu(), x.cpu() + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert replace_pixels(x, 0.5, g).device == x.device


@pytest.mark.parametrize("name", ["noise", "replace"])
def test_no_host_sync_and_calls_flat_in_the_batch(name):
    from keepmix._checks import input_checks
    from keepmix.launches import count_calls

    def call(b):
        x = torch.rand(b, 3, 16, 16)
        g = torch.Generator().manual_seed(0)
        return lambda: gaussian_noise(x, 0.1, g) if name == "noise" else replace_pixels(x, 0.3, g)
    with input_checks(False):
        small, large = count_calls(call(4)), count_calls(call(64))
    assert small.syncs == 0 and large.syncs == 0
    assert small.calls == large.calls and small.calls <= 12


# --------------------------------------------------------------------------- imagecorruptions (optional)

def test_imagenet_c_through_imagecorruptions():
    pytest.importorskip("imagecorruptions")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = imagenet_c(x, "gaussian_noise", 3, seed=0)
    again = imagenet_c(x, "gaussian_noise", 3, seed=0)
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(out, again)
    assert not torch.equal(out, x)
    with pytest.raises(ValueError, match="severity"):
        imagenet_c(x, "fog", 6)


def test_imagenet_c_checks_arguments_before_needing_the_package():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="corruption"):
        imagenet_c(x, "not_a_corruption", 1)
    with pytest.raises(TypeError, match="severity"):
        imagenet_c(x, "fog", 1.5)
    # the seed goes to numpy.random.seed: its range, named (1.5 was truncated, -1 a bare NumPy message)
    for seed, error in ((1.5, TypeError), ("a", TypeError), (True, TypeError), (-1, ValueError), (2 ** 32, ValueError)):
        with pytest.raises(error, match="seed"):
            imagenet_c(x, "fog", 1, seed=seed)


def test_imagenet_c_glue_with_a_stand_in_package(monkeypatch):
    """Without the optional package: a stand-in ``imagecorruptions`` that returns float64 values beyond 0–255
    and a larger image, as some of the real corruptions do; the glue quantises, clips, crops and seeds."""
    import types
    calls = []

    def corrupt(image, corruption_name, severity):
        calls.append((image.shape, image.dtype, corruption_name, severity))
        grown = np.pad(image.astype(np.float64), ((0, 2), (0, 2), (0, 0)))
        return grown + np.random.uniform(-300.0, 300.0, grown.shape)
    monkeypatch.setitem(sys.modules, "imagecorruptions", types.SimpleNamespace(corrupt=corrupt))
    x = torch.rand(3, 3, 8, 6)
    out = imagenet_c(x, "fog", np.int64(2), seed=7)
    assert out.dtype == torch.float32 and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert calls[-1] == ((8, 6, 3), np.dtype(np.uint8), "fog", 2) and len(calls) == 3
    assert torch.equal(out, imagenet_c(x, "fog", 2, seed=7))                    # seeded
    assert imagenet_c(x.half(), "fog", 2, seed=7).dtype == torch.float16
    assert imagenet_c((x * 255).to(torch.uint8), "fog", 5).dtype == torch.uint8
    assert imagenet_c(x.transpose(2, 3), "fog", 1).shape == (3, 3, 6, 8)          # non-contiguous


# --------------------------------------------------------------------------- CIFAR-C files, written here

N = 4  # images per severity
K = 3  # classes


def write_cifar_c(folder: Path, corruptions=("gaussian_noise", "fog", "saturate"), labels_repeated=True) -> dict:
    """Published layout: one uint8 (5·N)×32×32×3 .npy per corruption plus labels.npy (5·N labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 1], dtype=np.int64)
    np.save(folder / "labels.npy", np.tile(labels, 5) if labels_repeated else labels)
    arrays = {}
    for name in corruptions:
        array = rng.integers(0, 256, (5 * N, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", array)
        arrays[name] = array
    return {"labels": labels, "arrays": arrays}


def test_cifar_c_lists_the_19_published_corruptions():
    assert len(BENCHMARK_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4 and len(set(ALL_CORRUPTIONS)) == 19
    assert CIFAR10_C.archive_md5 == "56bf5dcef84df0e2308c6dcbcbbd8499"
    assert CIFAR100_C.archive_md5 == "11f0ed0f1191edbf9fa23466ae6021d3"
    assert "zenodo.org/records/2535967" in CIFAR10_C.url and "zenodo.org/records/3555552" in CIFAR100_C.url


def test_cifar_c_loader_reads_the_published_layout(tmp_path):
    written = write_cifar_c(tmp_path / "CIFAR-10-C")
    data = load_cifar_c(tmp_path, "cifar10-c")
    assert data.corruptions == ["gaussian_noise", "fog", "saturate"]  # the benchmark's order, extras after
    assert data.per_severity == N and data.severities == 5
    assert data.labels.tolist() == written["labels"].tolist()
    for name, array in written["arrays"].items():
        stacked = data.images(name)
        assert stacked.shape == (5, N, 3, 32, 32) and stacked.dtype == torch.uint8
        for s in range(1, 6):
            block = array[(s - 1) * N:s * N].transpose(0, 3, 1, 2)
            assert np.array_equal(data.images(name, s).numpy(), block)
            assert np.array_equal(stacked[s - 1].numpy(), block)
    # the folder itself works as root, and labels of length N too
    write_cifar_c(tmp_path / "flat", labels_repeated=False)
    assert load_cifar_c(tmp_path / "flat", "cifar10-c").labels.tolist() == written["labels"].tolist()


def test_cifar_c_loader_refuses_broken_files(tmp_path):
    folder = tmp_path / "CIFAR-100-C"
    write_cifar_c(folder, ("fog",))
    np.save(folder / "snow.npy", np.zeros((5 * N + 1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="snow"):
        load_cifar_c(tmp_path, "cifar100-c").images("snow")
    (folder / "snow.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="snow"):
        load_cifar_c(tmp_path, "cifar100-c", corruptions=["snow"])
    with pytest.raises(FileNotFoundError, match="frost"):
        load_cifar_c(tmp_path, "cifar100-c", corruptions=["frost"])
    with pytest.raises(FileNotFoundError, match="CIFAR-10-C"):
        load_cifar_c(tmp_path / "nothing", "cifar10-c")
    with pytest.raises(ValueError, match="name"):
        load_cifar_c(tmp_path, "cifar1000-c")
    np.save(folder / "labels.npy", np.full(5 * N, 7, dtype=np.int64))  # CIFAR-100-C: 100 classes, 7 is fine
    assert load_cifar_c(tmp_path, "cifar100-c", corruptions=["fog"]).labels.tolist() == [7] * N
    np.save(folder / "labels.npy", np.full(5 * N, 100, dtype=np.int64))
    with pytest.raises(ValueError, match="labels"):
        load_cifar_c(tmp_path, "cifar100-c", corruptions=["fog"])


def test_cifar_c_download_refuses_bytes_with_another_md5(tmp_path):
    import tarfile

    from keepmix.data import ChecksumError
    import keepmix.data.cifar_c as cifar_c
    write_cifar_c(tmp_path / "src" / "CIFAR-10-C", ("fog",))
    archive = tmp_path / "CIFAR-10-C.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "CIFAR-10-C", arcname="CIFAR-10-C")
    fake = cifar_c.CorruptedSpec("CIFAR-10-C", "CIFAR-10-C", archive.as_uri(), "CIFAR-10-C.tar",
                                 CIFAR10_C.archive_md5, 0, 10)
    original = dict(cifar_c.CORRUPTED_SETS)
    try:
        cifar_c.CORRUPTED_SETS["cifar10-c"] = fake
        with pytest.raises(ChecksumError):
            load_cifar_c(tmp_path / "dest", "cifar10-c", download=True)
        from keepmix.data import file_md5
        cifar_c.CORRUPTED_SETS["cifar10-c"] = cifar_c.CorruptedSpec(
            "CIFAR-10-C", "CIFAR-10-C", archive.as_uri(), "CIFAR-10-C.tar", file_md5(archive), 0, 10)
        data = load_cifar_c(tmp_path / "dest", "cifar10-c", download=True)
        assert data.corruptions == ["fog"] and data.per_severity == N
    finally:
        cifar_c.CORRUPTED_SETS.clear()
        cifar_c.CORRUPTED_SETS.update(original)


# --------------------------------------------------------------------------- errors against hand computations

class MeanRed(nn.Module):
    """A model with known outputs: one-hot logits of the class given by the mean red value m of its input
    (0–255 floats here): class 0 when m < 85, 1 when 85 ≤ m < 170, 2 otherwise."""

    def forward(self, x):
        m = x[:, 0].float().mean(dim=(1, 2))
        c = torch.bucketize(m, torch.tensor([85.0, 170.0]), right=True)
        return nn.functional.one_hot(c, K).float()


def _predict(images: np.ndarray) -> np.ndarray:
    m = images[..., 0].reshape(images.shape[0], -1).astype(np.float64).mean(axis=1)
    return np.digitize(m, [85.0, 170.0])


def test_file_errors_match_a_hand_computation(tmp_path):
    written = write_cifar_c(tmp_path / "CIFAR-10-C")
    model = MeanRed()
    rows = corruption_rows(model, torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                           [Item("files", "cifar10-c")], normalize=lambda x: x.float(), device=torch.device("cpu"),
                           batch_size=3, files_root=str(tmp_path), num_classes=10)
    expected = {}
    for name, array in written["arrays"].items():
        for s in range(1, 6):
            block = array[(s - 1) * N:s * N]
            expected[(name, s)] = 100.0 * float((_predict(block) != written["labels"]).mean())
    assert {(r["corruption"], r["severity"]): r["error"] for r in rows} == pytest.approx(expected)
    ce = np.mean([np.mean([expected[(c, s)] for s in range(1, 6)]) for c in written["arrays"]])
    assert corruption_error(rows) == pytest.approx(ce)


def test_on_the_fly_errors_match_a_hand_computation():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, K, (10,))
    items = parse_corruptions("noise=0.3,replace=0.5")
    rows = corruption_rows(MeanRed(), images, labels, items, normalize=lambda x: x.float(),
                           device=torch.device("cpu"), batch_size=4, seed=3)
    from keepmix.robustness import item_seed
    # the noise item: one generator seeded by item_seed, drawn batch by batch (4, 4, 2)
    g = torch.Generator().manual_seed(item_seed(3, items[0]))
    noisy = torch.cat([gaussian_noise(images[i:i + 4], 0.3, g) for i in range(0, 10, 4)])
    err_noise = 100.0 * float((torch.from_numpy(_predict(noisy.permute(0, 2, 3, 1).numpy())) != labels).float().mean())
    # the replacement item: a shift over the whole set first, then per batch positions
    g = torch.Generator().manual_seed(item_seed(3, items[1]))
    shift = int(torch.randint(1, 10, (1,), generator=g))
    source = images[(torch.arange(10) + shift) % 10]
    replaced = torch.cat([replace_pixels(images[i:i + 4], 0.5, g, source=source[i:i + 4]) for i in range(0, 10, 4)])
    err_rep = 100.0 * float((torch.from_numpy(_predict(replaced.permute(0, 2, 3, 1).numpy())) != labels).float().mean())
    assert [(r["corruption"], r["severity"], r["value"]) for r in rows] == [("noise", 1, 0.3), ("replace", 1, 0.5)]
    assert [r["error"] for r in rows] == pytest.approx([err_noise, err_rep])
    assert corruption_error(rows) == pytest.approx((err_noise + err_rep) / 2)
    again = corruption_rows(MeanRed(), images, labels, items, normalize=lambda x: x.float(),
                            device=torch.device("cpu"), batch_size=4, seed=3)
    assert again == rows


def test_relative_mce_is_hendrycks_definition():
    rows = [{"corruption": "a", "error": e} for e in (20.0, 30.0)] + [{"corruption": "b", "error": e} for e in (50.0,)]
    base = [{"corruption": "a", "error": e} for e in (40.0, 60.0)] + [{"corruption": "b", "error": e} for e in (45.0,)]
    out = relative_summary(rows, 10.0, base, 45.0)
    assert out["per_corruption"]["a"]["ce"] == pytest.approx(100 * 50 / 100)
    assert out["per_corruption"]["a"]["relative_ce"] == pytest.approx(100 * (10 + 20) / ((40 - 45) + (60 - 45)))
    assert out["per_corruption"]["b"]["ce"] == pytest.approx(100 * 50 / 45)
    assert out["per_corruption"]["b"]["relative_ce"] is None  # the baseline is not degraded by b: undefined
    assert out["mce"] == pytest.approx((50 + 100 * 50 / 45) / 2) and out["relative_count"] == 1
    assert out["relative_mce"] == pytest.approx(300.0)
    with pytest.raises(ValueError, match="baseline"):
        relative_summary(rows, 10.0, base[:2], 45.0)


def test_parse_corruptions():
    items = parse_corruptions("noise, replace=0.25,noise=0.2,cifar100-c")
    assert items == [Item("noise", "noise", 0.1), Item("replace", "replace", 0.25), Item("noise", "noise", 0.2),
                     Item("files", "cifar100-c")]
    assert parse_corruptions("noise,fog=2") == [Item("noise", "noise", 0.1), Item("imagenet_c", "fog", 2.0)]
    assert len(parse_corruptions("imagenet-c")) == 75 and len(parse_corruptions("jpeg-compression")) == 5
    assert spec_tag(items).startswith("noise-replace-cifar100-c-")   # non-default strengths: + a CRC of the SPEC
    for bad, word in [("", "corruption"), ("nois", "noise"), ("noise=x", "number"), ("replace=2", "share"),
                      ("noise=-1", "σ"), ("fog=7", "severity"), ("noise,noise", "twice"), ("cifar10-c=1", "no value"),
                      # a file set's rows would share names (fog, gaussian_noise) with ImageNet-C types or the other set
                      ("cifar100-c,fog=2", "separate"), ("cifar10-c,imagenet-c", "separate"),
                      ("cifar10-c,cifar100-c", "separate"), ("noise=", "no value after"), ("fog= ", "no value after")]:
        with pytest.raises(ValueError, match=word):
            parse_corruptions(bad)


# --------------------------------------------------------------------------- the CLI end to end

TINY = """\
name: tiny
progress: false
tensorboard: false
data: {name: salient_shapes, kwargs: {n_per_class: 6, num_classes: 3, image_size: 32, object_size: 8}}
model: {name: resnet_small}
optim: {epochs: 1, batch_size: 6, lr: 0.05}
arms:
  - {name: plain, ops: []}
  - {name: mixed, ops: [{name: mixup, alpha: 1.0}]}
"""


def keepmix(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "keepmix", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=240)
    assert done.returncode == 0, f"keepmix {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_cli_eval_corruptions_end_to_end(tmp_path, capsys):
    from keepmix.cli import main
    (tmp_path / "tiny.yaml").write_text(TINY)
    keepmix("train", "tiny.yaml", "--output-dir", "runs", "--quiet", cwd=tmp_path)
    run, base = tmp_path / "runs" / "tiny" / "mixed", tmp_path / "runs" / "tiny" / "plain"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--corruptions", "noise,replace", "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    assert "corruption error" in out and "relative mCE" in out
    result = json.loads((run / "corruptions_noise-replace.json").read_text())
    assert [r["corruption"] for r in result["rows"]] == ["noise", "replace"]
    assert result["corruption_error"] == pytest.approx(sum(r["error"] for r in result["rows"]) / 2)
    assert result["relative"]["mce"] is not None and 0 <= result["baseline"]["clean_error"] <= 100
    with open(run / "corruptions_noise-replace.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["error"]) for r in table] == pytest.approx([r["error"] for r in result["rows"]])
    assert [float(r["baseline_error"]) for r in table] == pytest.approx([r["error"] for r in result["baseline"]["rows"]])
    # the same seed gives the same numbers; --json prints the result
    assert main(["eval", "--checkpoint", str(run), "--corruptions", "noise,replace", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["error"] for r in again["rows"]] == [r["error"] for r in result["rows"]]
    # published files of another class count are refused, naming both counts
    write_cifar_c(tmp_path / "c" / "CIFAR-10-C", ("fog",))
    assert main(["eval", "--checkpoint", str(run), "--corruptions", "cifar10-c",
                 "--corruptions-root", str(tmp_path / "c")]) != 0
    assert "10 classes" in capsys.readouterr().err


def test_a_corruption_experiment_summarises_errors_lower_is_better(tmp_path):
    from keepmix.experiment import Comparison, Table, load_tables, summarize, verdict, Interval, write_results
    with pytest.raises(ValueError, match="corruptions"):
        Table(name="t", recipe="default", metrics=["corruption_error"])
    with pytest.raises(ValueError, match="metrics"):
        Table(name="t", recipe="default", metrics=["accuracy"])
    table = Table(name="t", recipe="default", corruptions="noise,replace", metrics=["corruption_error", "clean_error"],
                  paper={"corruption_error": {"b": 40.0}}, comparisons=[Comparison("b", "a", None),
                                                                          Comparison("a", "b", {"clean_error": 1.0})])
    rows = [{"arm": arm, "seed": s, "val_top1": 50.0, "clean_error": 50.0 + d, "corruption_error": 60.0 + d + s}
            for s in range(3) for arm, d in (("a", 0.0), ("b", -2.0 - 0.1 * s))]
    text = summarize(table, rows, "reduced", [0, 1, 2])
    assert "## corruption error" in text and "## clean error" in text and "`noise,replace`" in text
    # b − a < 0 on the corruption error with no paper number: lower is better, so the first arm (b) is better
    assert "| b − a | 3 | -2.10 |" in text and "a better" in text
    assert verdict(Interval.of([-2.0, -2.1, -2.2]), None, lower_is_better=True) == "a better"
    assert verdict(Interval.of([-2.0, -2.1, -2.2]), None) == "b better"
    write_results(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[-2:] == ["clean_error", "corruption_error"]
    t4 = load_tables()["guidedmixup_t4"]
    assert t4.arms == ["mixup", "guided_sr", "guided_sr_aug"] and t4.corruptions == "noise,replace"
    assert t4.metrics[0] == "corruption_error"


# --------------------------------------------------------------------------- bad and degenerate input (review)

def test_rows_of_a_corruption_come_by_severity_whatever_the_spec_order():
    """``noise=0.5,noise=0.05``: σ 0.05 is severity 1, so its row comes first — the table's s1 column, the CSV
    and the JSON agree (the s1 column used to show σ 0.5, the JSON's severity 2)."""
    from keepmix.robustness import format_table
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, K, (6,))
    rows = corruption_rows(MeanRed(), images, labels, parse_corruptions("noise=0.5,replace,noise=0.05"),
                           normalize=lambda x: x.float(), device=torch.device("cpu"), batch_size=4)
    assert [(r["corruption"], r["severity"], r["value"]) for r in rows] == [
        ("noise", 1, 0.05), ("noise", 2, 0.5), ("replace", 1, 0.5)]
    alone = corruption_rows(MeanRed(), images, labels, parse_corruptions("noise=0.05"),
                            normalize=lambda x: x.float(), device=torch.device("cpu"), batch_size=4)
    assert rows[0]["error"] == alone[0]["error"]  # an item's images do not depend on the others
    text = format_table(rows, 0.0, {"corruption_error": corruption_error(rows)})
    noise_line = next(line for line in text.splitlines() if line.startswith("noise "))
    assert noise_line.split()[1:3] == [f"{rows[0]['error']:.2f}", f"{rows[1]['error']:.2f}"]
    assert "levels s1… = 0.05, 0.5" in text


def fake_run(folder: Path, num_classes: int = 3, batch_size: int = 6, n_per_class: int = 6, seed: int = 0) -> Path:
    """A run folder holding a checkpoint of an untrained resnet_small on salient_shapes (no training)."""
    from keepmix.engine.checkpoint import CHECKPOINT_VERSION, FORMAT, save_checkpoint
    from keepmix.models import build_model
    from keepmix.recipes import config_from_dict, config_to_dict
    config = config_from_dict({"name": "fake", "data": {"name": "salient_shapes", "kwargs": {
        "n_per_class": n_per_class, "num_classes": num_classes, "image_size": 16, "object_size": 6}},
        "model": {"name": "resnet_small"}, "optim": {"epochs": 1, "batch_size": batch_size}})
    torch.manual_seed(seed)
    model = build_model("resnet_small", num_classes)
    save_checkpoint({"config": config_to_dict(config), "model": model.state_dict(), "num_classes": num_classes,
                     "mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1, "format": FORMAT,
                     "version": CHECKPOINT_VERSION}, folder / "checkpoint.pt")
    return folder


def test_the_baseline_is_evaluated_on_the_runs_images_in_the_runs_batches(tmp_path):
    """A baseline whose own config has another evaluation set (n_per_class 5) and batch size (4) but the run's
    very weights must give the run's errors exactly: it is evaluated on the run's images, batches and noise
    (it used to be evaluated on its own data set and batches); a baseline of another class count is refused."""
    from keepmix.robustness import evaluate_run
    run = fake_run(tmp_path / "run")
    base = fake_run(tmp_path / "base", batch_size=4, n_per_class=5)
    result = evaluate_run(run, "noise=0.3,replace", baseline=base, device="cpu", write=False)
    assert result["baseline"]["clean_error"] == result["clean_error"]
    assert result["baseline"]["rows"] == result["rows"] and result["count"] == 18
    assert result["relative"]["mce"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="baseline.*4 classes"):
        evaluate_run(run, "noise", baseline=fake_run(tmp_path / "four", num_classes=4), device="cpu", write=False)


def test_evaluate_run_refuses_what_it_cannot_finish_before_evaluating(tmp_path, monkeypatch, capsys):
    """Bad batch sizes, a file set without its folder (or of another class count) and ImageNet-C types without
    their package are refused before any image is evaluated; the CLI says so in one line, exit code 2."""
    import keepmix.robustness as robustness
    from keepmix.cli import main
    run = fake_run(tmp_path / "run")
    write_cifar_c(tmp_path / "c" / "CIFAR-10-C", ("fog",))

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before refusing")
    monkeypatch.setattr(robustness, "count_errors", no_evaluation)
    for batch_size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            robustness.evaluate_run(run, "noise", batch_size=batch_size, device="cpu", write=False)
    with pytest.raises(ValueError, match="corruptions-root"):
        robustness.evaluate_run(run, "noise,cifar10-c", device="cpu", write=False)
    with pytest.raises(ValueError, match="10 classes"):
        robustness.evaluate_run(run, "noise,cifar10-c", files_root=str(tmp_path / "c"), device="cpu", write=False)
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--checkpoint", str(run), "--corruptions", "noise", "--batch-size", "0"])
    assert stop.value.code == 2 and "--batch-size" in capsys.readouterr().err
    try:
        import imagecorruptions  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="imagecorruptions"):
            robustness.evaluate_run(run, "noise,fog=2", device="cpu", write=False)
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run), "--corruptions", "noise,fog=2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("keepmix eval: error:") and "imagecorruptions" in err and "Traceback" not in err


def test_cifar_c_loader_refuses_bad_arguments_and_files_when_opened(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    write_cifar_c(folder, ("gaussian_noise", "fog"))
    data = load_cifar_c(tmp_path, "cifar10-c")
    assert data.images("fog", np.int64(2)).shape == (N, 3, 32, 32)  # any integer type
    with pytest.raises(TypeError, match="severity"):
        data.images("fog", 2.0)
    with pytest.raises(ValueError, match="severity"):
        data.images("fog", 6)
    with pytest.raises(ValueError, match="corruption.*snow"):
        data.images("snow", 1)
    with pytest.raises(TypeError, match="corruptions"):  # a string is not a list of names ('f', 'o', 'g')
        load_cifar_c(tmp_path, "cifar10-c", corruptions="fog")
    for names in (["fog", "fog"], []):
        with pytest.raises(ValueError, match="corruptions must list distinct names, at least one"):
            load_cifar_c(tmp_path, "cifar10-c", corruptions=names)
    with pytest.raises(ValueError, match="CIFAR-10-C"):  # the 10-class folder opened as CIFAR-100-C
        load_cifar_c(folder, "cifar100-c")
    # a broken file other than the first is refused when the set is opened, not when its turn comes
    (folder / "fog.npy").write_bytes((folder / "fog.npy").read_bytes()[:1000])
    with pytest.raises(ValueError, match="fog"):
        load_cifar_c(tmp_path, "cifar10-c")
    assert load_cifar_c(tmp_path, "cifar10-c", corruptions=["gaussian_noise"]).corruptions == ["gaussian_noise"]
    empty = tmp_path / "empty" / "CIFAR-10-C"
    empty.mkdir(parents=True)
    np.save(empty / "labels.npy", np.zeros(0, dtype=np.int64))
    np.save(empty / "fog.npy", np.zeros((0, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no images"):
        load_cifar_c(tmp_path / "empty", "cifar10-c")


def test_an_experiments_corruptions_are_checked_when_the_table_is_read():
    """A SPEC typo used to surface only after the first run had trained; file sets have no folder there."""
    from keepmix.experiment import Table
    with pytest.raises(ValueError, match="experiment t: corruptions.*nosie"):
        Table(name="t", recipe="default", corruptions="nosie,replace", metrics=["corruption_error"])
    with pytest.raises(ValueError, match="experiment t: corruptions.*corruptions-root"):
        Table(name="t", recipe="default", corruptions="cifar100-c", metrics=["corruption_error"])


def test_corruption_rows_checks_images_labels_and_seed():
    """12 labels for 10 images used to be cut silently to the first 10 (8 labels: a shape error deep inside)."""
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    call = dict(normalize=lambda x: x.float(), device=torch.device("cpu"), batch_size=4)
    items = parse_corruptions("noise")
    for labels in (torch.zeros(12, dtype=torch.long), torch.zeros(8, dtype=torch.long)):
        with pytest.raises(ValueError, match="labels.*one label per image"):
            corruption_rows(MeanRed(), images, labels, items, **call)
    for labels in (torch.zeros(10), torch.zeros(10, 1, dtype=torch.long), [0] * 10):
        with pytest.raises(TypeError, match="labels"):
            corruption_rows(MeanRed(), images, labels, items, **call)
    with pytest.raises(TypeError, match="images"):
        corruption_rows(MeanRed(), images.int(), torch.zeros(10, dtype=torch.long), items, **call)
    with pytest.raises(TypeError, match="seed"):
        corruption_rows(MeanRed(), images, torch.zeros(10, dtype=torch.long), items, seed=1.5, **call)
    one = corruption_rows(MeanRed(), images[:1], torch.zeros(1, dtype=torch.long), items, **call)
    assert one[0]["count"] == 1 and one[0]["error"] in (0.0, 100.0)  # a set of one image: a defined result
    with pytest.raises(ValueError, match="at least 2 images"):
        corruption_rows(MeanRed(), images[:1], torch.zeros(1, dtype=torch.long), parse_corruptions("replace"), **call)


def test_spec_tags_differ_for_other_strengths_and_stay_readable_at_the_defaults():
    from keepmix.robustness import parse_corruptions, spec_tag
    assert spec_tag(parse_corruptions("noise,replace")) == "noise-replace"
    weak, strong = spec_tag(parse_corruptions("noise=0.05")), spec_tag(parse_corruptions("noise=0.2"))
    assert weak != strong and weak.startswith("noise-") and strong.startswith("noise-")
    assert spec_tag(parse_corruptions("noise=0.05")) == weak                       # deterministic
