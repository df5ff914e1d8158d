"""The policies' two engines: the fused step equals the per-op-type dispatch bit for bit.

``apply_per_sample`` (the reference: each op type runs on the images that drew it, through the
functional ops the PIL tests pin) and ``fused_step`` (every op family on every image, selected per
image) must give identical batches for every op, magnitude, dtype, interpolation and image size,
and the policies must give identical results under either engine for the same seed.
"""

import warnings
import zlib

import pytest
import torch

from keepmix import input_checks
from keepmix.policies import AugMix, AutoAugment, RandAugment, TrivialAugmentWide
from keepmix.policies import functional as F
from keepmix.policies._engine import OPS, apply_per_sample, fused_step, use_fused

NAMES = tuple(OPS)


def draw_magnitudes(op_index, g):
    """A valid argument per image for its op (ranges wider than the policies use)."""
    values = []
    for k in op_index.tolist():
        name = NAMES[k]
        u = float(torch.rand((), generator=g))
        if name == "posterize":
            values.append(float(int(u * 9)))
        elif name == "solarize":
            values.append(float(int(u * 257)))
        elif name == "solarize_add":
            values.append(u * 110.0)
        elif name in ("brightness", "color", "contrast", "sharpness"):
            values.append(u * 1.9)
        elif name == "rotate":
            values.append(u * 60.0 - 30.0 if u < 0.9 else 90.0)  # include an exact quarter turn
        elif name in ("shear_x", "shear_y"):
            values.append(u * 0.6 - 0.3)
        elif name in ("translate_x", "translate_y"):
            values.append(float(int(u * 11) - 5) + (0.5 if u > 0.8 else 0.0))
        else:
            values.append(0.0)
    return torch.tensor(values)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [(9, 11), (16, 16), (2, 5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_fused_step_equals_the_dispatch_for_every_op(dtype, interpolation, size, channels):
    g = torch.Generator().manual_seed(zlib.crc32(repr((dtype, interpolation, size, channels)).encode()))
    batch = 3 * len(NAMES)
    images = torch.randint(0, 256, (batch, channels, *size), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        images = images.to(dtype) / 255.0
    op_index = torch.randperm(batch, generator=g) % len(NAMES)  # every op three times, shuffled
    magnitude = draw_magnitudes(op_index, g)
    fill = F.fill_tensor(tuple(range(10, 10 + 90 * channels, 90)) if channels > 1 else 77, images)
    expected = apply_per_sample(images, op_index, magnitude, NAMES, fill, interpolation)
    assert torch.equal(fused_step(images, op_index, magnitude, NAMES, fill, interpolation), expected)


def test_fused_step_with_a_single_op_and_with_no_level_or_blend_ops():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    fill = F.fill_tensor(128, images)
    for names in (("rotate",), ("identity", "shear_x"), ("equalize",), ("sharpness",), ("identity",)):
        op_index = torch.randint(0, len(names), (6,), generator=g)
        magnitude = torch.full((6,), 0.25)
        expected = apply_per_sample(images, op_index, magnitude, names, fill, "nearest")
        assert torch.equal(fused_step(images, op_index, magnitude, names, fill, "nearest"), expected), names


FACTORIES = {
    "AutoAugment": lambda **k: AutoAugment("svhn", fill=(10, 200, 30), **k),
    "RandAugment": lambda **k: RandAugment(num_ops=3, magnitude=12, magnitude_std=0.5, **k),
    "TrivialAugmentWide": lambda **k: TrivialAugmentWide(interpolation="bilinear", **k),
    "AugMix": lambda **k: AugMix(all_ops=True, **k),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_policies_give_the_same_batch_under_both_engines(name, dtype):
    images = torch.randint(0, 256, (24, 3, 12, 10), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    if dtype != torch.uint8:
        images = images.to(dtype) / 255.0
    outs = []
    for engine in ("dispatch", "fused"):
        op = FACTORIES[name](generator=torch.Generator().manual_seed(9), engine=engine)
        outs.append(op(images, None)[0])
    assert torch.equal(outs[0], outs[1])


def test_engine_choice_and_errors():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert not use_fused(x, "auto") and use_fused(x, "fused") and not use_fused(x, "dispatch")
    assert AutoAugment().engine == "auto"
    for bad in ("gpu", None, "FUSED"):
        with pytest.raises(ValueError, match="engine"):
            RandAugment(engine=bad)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_auto_engine_compiles_as_one_graph_and_equals_the_fused_engine(name):
    """Under torch.compile ``engine="auto"`` takes the fused step: no graph break, no host read, and the
    same result as the eager fused engine for the same global seed (compiled draws use torch's RNG)."""
    import torch._dynamo
    torch._dynamo.reset()
    images = torch.randint(0, 256, (8, 3, 12, 12), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    op = FACTORIES[name]()
    with input_checks(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(lambda: op(images, None)[0], backend="eager", fullgraph=True)
        torch.manual_seed(4)
        out = compiled()
    torch.manual_seed(4)
    assert torch.equal(out, FACTORIES[name](engine="fused")(images, None)[0])


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("values_per_chunk", [1, 700])
def test_the_cpu_dispatch_in_chunks_gives_the_same_batch(name, values_per_chunk, monkeypatch):
    """The CPU dispatch splits op groups (and AugMix's mixture) into cache-sized chunks of images; chunks
    of one image, and of two, give the batch the fused engine gives in one piece."""
    from keepmix.policies import _engine
    monkeypatch.setattr(_engine, "CPU_CHUNK_ELEMENTS", values_per_chunk)
    images = torch.randint(0, 256, (9, 3, 12, 10), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    assert _engine.chunk_size(images) == max(1, values_per_chunk // 360)
    outs = [FACTORIES[name](generator=torch.Generator().manual_seed(6), engine=engine)(images, None)[0]
            for engine in ("dispatch", "fused")]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("channels", [1, 3])
def test_contrast_of_a_non_contiguous_float_batch_is_the_same_under_both_engines(dtype, channels):
    """Found in review: with every image drawing contrast the dispatch ran on the caller's transposed batch
    and the fused step on its resampled (contiguous) copy, and the float mean's summation order follows the
    memory layout: 127 of 200 float32 batches differed by an ulp. The mean is now taken on a contiguous map."""
    g = torch.Generator().manual_seed(7)
    contrast = NAMES.index("contrast")
    for h, w in [(5, 7), (13, 9), (31, 17)]:
        images = (torch.randint(0, 256, (2, channels, w, h), generator=g).to(dtype) / 255).transpose(2, 3)
        op_index = torch.full((2,), contrast)
        magnitude = torch.tensor([0.3, 1.7])
        fill = F.fill_tensor(0, images)
        expected = apply_per_sample(images, op_index, magnitude, NAMES, fill, "nearest")
        assert torch.equal(fused_step(images, op_index, magnitude, NAMES, fill, "nearest"), expected)
        mixed = apply_per_sample(images, torch.tensor([contrast, NAMES.index("identity")]), magnitude, NAMES,
                                 fill, "nearest")
        assert torch.equal(mixed[0], expected[0])  # an image's result does not depend on its neighbours' ops
