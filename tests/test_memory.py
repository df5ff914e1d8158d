"""The saliency memory: writes and reads through the batch geometry against brute-force per-image references,
the ownership rule (erased pixels kept, mixed pixels by share), fallbacks and their counts, the ops and
pairing reading it, checkpoints, and the all-gather of writes with two gloo ranks."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from keepmix import (Cutout, CutMix, GuidedMixup, KeepCutMix, KeepCutout, KeepRandomErasing, Mixup, SaliencyMix,
                     SelectivePaste)
from keepmix.data import identity_geometry, output_to_source, random_crop_flip
from keepmix.memory import (MemoryPairing, MemorySaliency, SaliencyMemory, UniformSaliency, combine_ownership,
                            gradient_map, ownership)
from keepmix.pairing import greedy_pairing, saliency_distance
from keepmix.mixers import pairing_maps
from keepmix.saliency import spectral_residual


def _crop_flip_geometry(index, size=(6, 7), padding=2, seed=0):
    images = torch.zeros(index.shape[0], 1, *size)
    _, geometry = random_crop_flip(images, padding, torch.Generator().manual_seed(seed),
                                   geometry=identity_geometry(index, size))
    return geometry


def _peak_normalised(maps):
    return maps / maps.amax(dim=(1, 2), keepdim=True)


def test_write_then_read_follows_every_pixel_to_its_source_pixel_brute_force():
    memory = SaliencyMemory(10, (6, 7), dtype="float32")
    index = torch.tensor([4, 0, 9, 2, 7])
    first = _crop_flip_geometry(index, seed=1)
    maps = torch.rand(5, 6, 7, generator=torch.Generator().manual_seed(0)) + 0.1
    memory.write(first, maps)
    # the stored map, in the data set's coordinates, by brute force over the output pixels
    y, x = output_to_source(first)
    expected = torch.full((5, 6, 7), float("nan"))
    for b in range(5):
        for i in range(6):
            for j in range(7):
                yy, xx = int(y[b, i]), int(x[b, j])
                if 0 <= yy < 6 and 0 <= xx < 7:
                    expected[b, yy, xx] = maps[b, i, j] / maps[b].max()
    stored = memory.read_source(index)
    for b in range(5):
        seen = ~torch.isnan(expected[b])
        assert torch.equal(stored[b][seen], expected[b][seen])
        assert torch.allclose(stored[b][~seen], expected[b][seen].mean().expand(int((~seen).sum())))  # first-write fill
    # read back at another crop and flip: each output pixel shows its source pixel's stored value
    second = _crop_flip_geometry(index, seed=2)
    read = memory.read(second)
    y2, x2 = output_to_source(second)
    for b in range(5):
        for i in range(6):
            for j in range(7):
                yy, xx = int(y2[b, i]), int(x2[b, j])
                want = stored[b, yy, xx] if 0 <= yy < 6 and 0 <= xx < 7 else 0.0
                assert float(read[b, i, j]) == float(want), (b, i, j)
    assert memory.written[index].all() and int(memory.written.sum()) == 5


def test_erased_pixels_keep_the_memory_and_owned_pixels_are_replaced():
    memory = SaliencyMemory(3, (4, 4), dtype="float32")
    geometry = identity_geometry(torch.tensor([0, 1, 2]), (4, 4))
    old = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    memory.write(geometry, old)
    new = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(2)) + 0.5
    own = torch.ones(3, 4, 4)
    own[:, 1:3, 1:3] = 0.0            # an erased box
    own[2] = 0.0                      # an image wholly replaced
    memory.write(geometry, new, own)
    stored = memory.read_source(torch.arange(3))
    box = own[0] == 0
    assert torch.equal(stored[:2][:, box], _peak_normalised(old)[:2][:, box])
    assert torch.equal(stored[:2][:, ~box], _peak_normalised(new)[:2][:, ~box])
    assert torch.equal(stored[2], _peak_normalised(old)[2])


def test_mixed_pixels_are_written_where_mostly_the_samples_own():
    memory = SaliencyMemory(2, (2, 2), dtype="float32")
    geometry = identity_geometry(torch.tensor([0, 1]), (2, 2))
    memory.write(geometry, torch.ones(2, 2, 2))
    share = torch.tensor([[[0.49, 0.5], [0.9, 0.0]], [[0.6, 0.6], [0.6, 0.6]]])
    new = torch.tensor([[[2.0, 4.0], [1.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]])
    memory.write(geometry, new, share)
    assert memory.read_source(torch.tensor([0, 1])).tolist() == [[[1.0, 1.0], [0.25, 1.0]],
                                                                  [[0.25, 0.5], [0.75, 1.0]]]
    # a whole-image share (Mixup's λ)
    memory.write(geometry, torch.full((2, 2, 2), 3.0), torch.tensor([0.3, 0.7]))
    assert memory.read_source(torch.tensor([0])).tolist() == [[[1.0, 1.0], [0.25, 1.0]]]
    assert memory.read_source(torch.tensor([1])).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]


def test_half_resolution_cells_average_their_pixels_and_read_bilinearly():
    memory = SaliencyMemory(1, (4, 4), scale=0.5, dtype="float32")
    assert memory.resolution == (2, 2) and memory.supersample == 2
    geometry = identity_geometry(torch.tensor([0]), (4, 4))
    maps = torch.arange(16.0).view(1, 4, 4) + 1
    memory.write(geometry, maps)
    blocks = torch.nn.functional.avg_pool2d(maps.unsqueeze(1), 2).squeeze(1) / 16.0
    assert torch.allclose(memory.read_source(torch.tensor([0])), blocks)
    read = memory.read(geometry)
    up = torch.nn.functional.interpolate(blocks.unsqueeze(1), size=(4, 4), mode="bilinear",
                                         align_corners=False).squeeze(1)
    assert torch.allclose(read, up)


def test_non_finite_or_zero_gradients_write_nothing_and_ages_count_epochs():
    memory = SaliencyMemory(3, (2, 2))
    geometry = identity_geometry(torch.tensor([0, 1, 2]), (2, 2))
    maps = torch.ones(3, 2, 2)
    maps[0, 0, 0] = float("inf")
    maps[1] = 0.0
    memory.set_epoch(2)
    memory.write(geometry, maps)
    assert memory.written.tolist() == [False, False, True]
    memory.set_epoch(5)
    assert memory.age(torch.tensor([0, 2])).tolist() == [-1, 3]
    assert not torch.isnan(memory.maps.float()).any()


def test_gradient_map_reductions():
    grad = torch.tensor([[[[3.0]], [[-4.0]]]])
    assert gradient_map(grad, "max").item() == 4.0
    assert gradient_map(grad, "rms").item() == pytest.approx((12.5) ** 0.5)


def test_memory_cost_formula():
    assert SaliencyMemory.bytes_needed(50_000, (32, 32), "float16") == 50_000 * (32 * 32 * 2 + 5)
    assert SaliencyMemory.bytes_needed(1_281_167, (56, 56)) / 1e9 == pytest.approx(8.04, abs=0.01)
    assert SaliencyMemory(4, (8, 8), scale=0.25).nbytes == 4 * (2 * 2 * 2 + 5)


class _Counting:
    """A fallback source that counts its calls and returns a map peaked at the top-left corner."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images, targets=None):
        self.calls += 1
        maps = torch.zeros(images.shape[0], *images.shape[-2:])
        maps[:, 0, 0] = 1.0
        return maps


def test_memory_source_falls_back_for_unwritten_samples_and_counts_them():
    memory = SaliencyMemory(6, (4, 4), dtype="float32")
    fallback = _Counting()
    source = MemorySaliency(memory, fallback)
    images = torch.rand(3, 3, 4, 4)
    geometry = identity_geometry(torch.tensor([0, 1, 2]), (4, 4))
    memory.write(identity_geometry(torch.tensor([1]), (4, 4)), torch.full((1, 4, 4), 2.0))
    with memory.batch(geometry):
        maps = source(images)
    assert fallback.calls == 1
    assert source.last_stats["memory_fallback"].tolist() == [True, False, True]
    assert maps[1].tolist() == [[1.0] * 4] * 4 and maps[0, 0, 0] == 1.0 and maps[0].sum() == 1.0
    # once every sample of a batch has been seen, the fallback does not run at all
    memory.write(geometry, torch.rand(3, 4, 4) + 0.1)
    with memory.batch(geometry):
        source(images)
    assert fallback.calls == 1 and not source.last_stats["memory_fallback"].any()
    reads, fallbacks, age, written = memory.counters().tolist()
    assert (reads, fallbacks, age, written) == (6.0, 2.0, 0.0, 3.0)
    memory.set_epoch(2)
    with memory.batch(geometry):
        source(images)
    assert memory.counters().tolist()[2] == 6.0  # three maps written two epochs ago
    # no bound batch: everything falls back
    assert memory.current is None
    source(images)
    assert fallback.calls == 2 and source.last_stats["memory_fallback"].all()


def test_a_sample_whose_visit_wrote_nothing_still_gets_the_fallback_next_time():
    # Mixup's λ < ½ (own < min_own everywhere), a fully erased image or an fp16 overflow step write no cell:
    # the sample stays unwritten, and a later batch of it must run the fallback rather than read zeros
    memory = SaliencyMemory(4, (4, 4), dtype="float32")
    fallback = _Counting()
    source = MemorySaliency(memory, fallback)
    geometry = identity_geometry(torch.arange(4), (4, 4), host_index=torch.arange(4))
    own = torch.tensor([1.0, 0.4, 1.0, 1.0])                       # sample 1: mostly its partner's
    grad = torch.rand(4, 3, 4, 4) + 0.1
    grad[3] = float("nan")                                          # sample 3: an overflow step
    memory.record_gradient(geometry, grad, own)
    assert memory.written.tolist() == [True, False, True, False]
    assert memory.unseen(geometry)
    with memory.batch(geometry):
        maps = source(torch.rand(4, 3, 4, 4))
    assert fallback.calls == 1
    assert source.last_stats["memory_fallback"].tolist() == [False, True, False, True]
    assert float(maps[1, 0, 0]) == 1.0 and float(maps[1].sum()) == 1.0 and float(maps[3].sum()) == 1.0
    assert memory.counters().tolist()[:2] == [4.0, 2.0]
    memory.record_gradient(geometry, torch.rand(4, 3, 4, 4) + 0.1)
    assert not memory.unseen(geometry)
    # a checkpoint of an older run (seen meant "passed to a write") loads as "written"
    state = memory.state_dict()
    state["seen"], state["written"] = torch.ones(4, dtype=torch.bool), torch.tensor([True, False, True, True])
    again = SaliencyMemory(4, (4, 4), dtype="float32")
    again.load_state_dict(state)
    assert again.unseen(geometry) and not again.unseen(identity_geometry(torch.tensor([0, 2, 3]), (4, 4)))


def test_indices_outside_the_memory_are_refused_before_any_indexing():
    # on a GPU index_select out of range is a device-side assert; the host copy is checked instead
    memory = SaliencyMemory(4, (3, 3), dtype="float32")
    for index in ([4, 0], [-1, 0]):
        geometry = identity_geometry(torch.tensor(index), (3, 3), host_index=torch.tensor(index))
        with pytest.raises(IndexError, match="outside the memory's 0…3"):
            memory.write(geometry, torch.rand(2, 3, 3) + 0.1)
        with pytest.raises(IndexError, match="outside the memory's 0…3"):
            memory.bind(geometry)
    assert not memory.written.any() and not memory._seen.any()


def test_memory_source_refuses_a_batch_its_geometry_does_not_describe():
    memory = SaliencyMemory(4, (4, 4))
    with memory.batch(identity_geometry(torch.tensor([0, 1]), (4, 4))):
        with pytest.raises(ValueError, match="bound geometry"):
            MemorySaliency(memory)(torch.rand(3, 3, 4, 4))


def _left_salient_memory(n=4, size=16):
    """Every sample's memory salient on its left half only."""
    memory = SaliencyMemory(n, (size, size), dtype="float32")
    maps = torch.zeros(n, size, size)
    maps[:, :, : size // 2] = 1.0
    memory.write(identity_geometry(torch.arange(n), (size, size)), maps)
    return memory


def test_keep_ops_cut_where_the_memory_says_nothing_is_and_report_fallbacks():
    memory = _left_salient_memory()
    geometry = identity_geometry(torch.arange(4), (16, 16))
    images = torch.rand(4, 3, 16, 16) + 1.0
    generator = torch.Generator().manual_seed(0)
    for op in (KeepCutout(6, saliency=MemorySaliency(memory), generator=generator),
               KeepRandomErasing(p=1.0, value=0.0, saliency=MemorySaliency(memory), generator=generator),
               KeepCutMix(3, saliency=MemorySaliency(memory), generator=generator),
               SelectivePaste(lambda x: torch.zeros_like(x), 6, saliency=MemorySaliency(memory), generator=generator)):
        with memory.batch(geometry):
            out, _ = op(images, torch.tensor([0, 1, 2, 0]))
        changed = (out != images).any(dim=1).float()
        salient = memory.read(geometry)          # 1 on the left half, 0 on the right
        share = float((salient * changed).sum() / changed.sum())
        if isinstance(op, SelectivePaste):       # what is pasted back (unchanged) sits on the salient half
            kept = 1.0 - changed
            assert float((salient * kept).sum() / kept.sum()) > 0.8, type(op).__name__
        else:                                    # the cut avoids it
            assert share < 0.35, type(op).__name__
        assert op.last_stats["memory_fallback"].tolist() == [False] * 4
    # precomputed maps: the memory did not run, so no memory statistic
    op = KeepCutout(6, saliency=MemorySaliency(memory))
    op(images, saliency_maps=torch.rand(4, 16, 16))
    assert "memory_fallback" not in op.last_stats


@pytest.mark.parametrize("preset", ["KeepAutoAugment", "KeepRandAugment", "KeepTrivialAugment", "KeepAugMix"])
def test_keep_policy_presets_reading_the_memory_paste_as_if_given_its_maps(preset):
    """SelectivePaste's presets take the memory as a source: the output is exactly the op's output when the
    memory's maps at the batch geometry are passed as precomputed saliency, and no sample fell back."""
    import keepmix
    memory = _left_salient_memory()
    geometry = _crop_flip_geometry(torch.arange(4), size=(16, 16), seed=5)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0])
    cls = getattr(keepmix, preset)
    reading = cls(6, saliency=MemorySaliency(memory), generator=torch.Generator().manual_seed(0))
    given = cls(6, generator=torch.Generator().manual_seed(0))
    with memory.batch(geometry):
        out, _ = reading(images, labels)
    expected, _ = given(images, labels, saliency_maps=memory.read(geometry))
    assert torch.equal(out, expected)
    assert reading.last_stats["memory_fallback"].tolist() == [False] * 4


def test_bfloat16_memory_stores_the_peak_normalised_map_rounded_to_bfloat16():
    memory = SaliencyMemory(3, (4, 5), dtype="bfloat16")
    assert memory.maps.dtype == torch.bfloat16 and memory.nbytes == 3 * (4 * 5 * 2 + 5)
    maps = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0)) + 0.01
    memory.write(identity_geometry(torch.arange(3), (4, 5)), maps)
    assert torch.equal(memory.maps, _peak_normalised(maps).to(torch.bfloat16))


def test_guided_mixup_reads_the_memory_and_declares_its_ownership():
    memory = _left_salient_memory()
    geometry = identity_geometry(torch.arange(4), (16, 16))
    mixer = GuidedMixup(3, saliency=MemorySaliency(memory), mix_prob=1.0, generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, 3, 16, 16)
    with memory.batch(geometry):
        out, targets = mixer(images, torch.tensor([0, 1, 2, 0]))
    own = mixer.last_stats["own"]
    assert own.shape == (4, 16, 16) and torch.allclose(own.mean(dim=(1, 2)), mixer.last_stats["lam"])
    assert mixer.last_stats["memory_fallback"].tolist() == [False] * 4
    assert torch.equal(ownership(mixer, images, out), own)


def test_saliency_mix_reading_the_memory_reports_its_fallbacks():
    """SaliencyMix, like the Keep ops and GuidedMixup, copies the memory's per-sample fallback flags into its
    last_stats (none here: every sample has a map), and has none when given precomputed maps."""
    memory = _left_salient_memory()
    geometry = identity_geometry(torch.arange(4), (16, 16))
    mixer = SaliencyMix(3, saliency=MemorySaliency(memory), generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, 3, 16, 16)
    with memory.batch(geometry):
        mixer(images, torch.tensor([0, 1, 2, 0]))
    assert mixer.last_stats["memory_fallback"].tolist() == [False] * 4
    peaks = mixer.last_stats["peak"]
    assert torch.all(peaks[:, 1] < 8)  # the source's peak lies in the salient left half
    mixer(images, torch.tensor([0, 1, 2, 0]), saliency_maps=torch.rand(4, 16, 16))
    assert "memory_fallback" not in mixer.last_stats


def test_greedy_pairing_of_a_mixer_runs_on_the_memory_maps():
    memory = SaliencyMemory(6, (8, 8), dtype="float32")
    maps = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(3))
    geometry = identity_geometry(torch.arange(6), (8, 8))
    memory.write(geometry, maps)
    mixer = Mixup(3, pairing=MemoryPairing(memory), generator=torch.Generator().manual_seed(0))
    with memory.batch(geometry):
        mixer(torch.rand(6, 3, 8, 8), torch.arange(6) % 3)
    expected = greedy_pairing(saliency_distance(pairing_maps(memory.read(geometry))))
    assert torch.equal(mixer.last_stats["partner"], expected)
    assert mixer.pairing.last_stats["memory_fallback"].tolist() == [False] * 6


def _manifold_mixup(pairing, generator):
    from keepmix.mixers import ManifoldMixup
    from keepmix.models import build_model
    return ManifoldMixup(build_model("resnet_small", 3), 3, layers=("input",), pairing=pairing, generator=generator)


@pytest.mark.parametrize("make", [
    lambda memory, g: CutMix(3, pairing=MemoryPairing(memory), generator=g),
    lambda memory, g: _manifold_mixup(MemoryPairing(memory), g),
    lambda memory, g: SaliencyMix(3, saliency=MemorySaliency(memory), pairing="greedy", generator=g),
    lambda memory, g: GuidedMixup(3, saliency=MemorySaliency(memory), pairing="greedy", generator=g)],
    ids=["CutMix", "ManifoldMixup", "SaliencyMix", "GuidedMixup"])
def test_every_mixers_greedy_pairing_runs_on_the_memory_maps(make):
    """Greedy pairing is farthest-first on the blurred, sum-to-1 maps; with the memory as the pairing's (or the
    mixer's) source, those maps are the memory's at the batch geometry — not the images' spectral residual."""
    memory = SaliencyMemory(6, (8, 8), dtype="float32")
    geometry = _crop_flip_geometry(torch.arange(6), size=(8, 8), seed=4)
    memory.write(identity_geometry(torch.arange(6), (8, 8)),
                 torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(5)) + 0.05)
    mixer = make(memory, torch.Generator().manual_seed(0))
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with memory.batch(geometry):
        if isinstance(mixer, GuidedMixup):  # it reports no partner; guide() is its pairing step
            partner = mixer.guide(images, torch.arange(6) % 3)[0]
        else:
            mixer(images, torch.arange(6) % 3)
            partner = mixer.last_stats["partner"]
    on_memory = greedy_pairing(saliency_distance(pairing_maps(memory.read(geometry))))
    on_images = greedy_pairing(saliency_distance(pairing_maps(spectral_residual(images))))
    assert not torch.equal(on_memory, on_images)  # the two sources would pair differently: the test can tell
    assert torch.equal(partner, on_memory)


def test_ownership_of_erasing_mixing_and_unchanged_batches():
    images = torch.rand(2, 3, 8, 8) + 1.0
    cut = Cutout(4, generator=torch.Generator().manual_seed(0))
    out, _ = cut(images, torch.tensor([0, 1]))
    own = ownership(cut, images, out)
    assert torch.equal(own, (out == images).all(dim=1).float()) and (own == 0).any()
    mixup = Mixup(2, generator=torch.Generator().manual_seed(0))
    mixed, _ = mixup(images, torch.tensor([0, 1]))
    assert torch.equal(ownership(mixup, images, mixed)[:, 0, 0], mixup.last_stats["lam"])
    assert ownership(object(), images, images) is None
    assert combine_ownership(None, own) is own and torch.equal(combine_ownership(own, own), own)


def test_writing_and_reading_the_memory_read_nothing_back_to_the_host():
    """The step's write (gradient map, ownership of a cut, the store) and a read of written samples are device
    work only: no ``.item()``/``bool()``/``.tolist()`` of a tensor, so nothing waits for the device."""
    from keepmix.launches import count_calls
    memory = SaliencyMemory(8, (8, 8))
    index = torch.tensor([5, 1, 6, 2])
    geometry = _crop_flip_geometry(index, size=(8, 8), seed=3)
    images = torch.rand(4, 3, 8, 8) + 1.0
    cut = Cutout(3, generator=torch.Generator().manual_seed(0))
    out, _ = cut(images, torch.tensor([0, 1, 2, 0]))
    grad = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    write = count_calls(lambda: memory.record_gradient(geometry, grad, ownership(cut, images, out)))
    assert write.syncs == 0, write.names
    source = MemorySaliency(memory)

    def read():
        with memory.batch(geometry):
            return source(images)

    assert count_calls(read).syncs == 0
    assert not source.last_stats["memory_fallback"].any()


def test_uniform_fallback_is_flat():
    assert torch.equal(UniformSaliency()(torch.rand(2, 3, 4, 5)), torch.ones(2, 4, 5))
    memory = SaliencyMemory(2, (4, 5))
    assert MemorySaliency(memory, "uniform").fallback is None


def test_state_dict_round_trip_and_mismatch():
    memory = SaliencyMemory(5, (4, 4))
    memory.set_epoch(3)
    memory.write(identity_geometry(torch.tensor([1, 3]), (4, 4)), torch.rand(2, 4, 4) + 0.1)
    state = memory.state_dict()
    again = SaliencyMemory(5, (4, 4))
    again.load_state_dict(state)
    assert torch.equal(again.maps, memory.maps) and torch.equal(again.written, memory.written)
    assert torch.equal(again.stamp, memory.stamp) and again.epoch == 3
    assert again.unseen(identity_geometry(torch.tensor([0, 1]), (4, 4)))
    assert not again.unseen(identity_geometry(torch.tensor([3, 1]), (4, 4)))
    with pytest.raises(ValueError, match="resolution"):
        SaliencyMemory(5, (4, 4), scale=0.5).load_state_dict(state)


def test_argument_checks():
    with pytest.raises(ValueError, match="scale"):
        SaliencyMemory(4, (8, 8), scale=0.0)
    with pytest.raises(ValueError, match="reduce"):
        SaliencyMemory(4, (8, 8), reduce="mean")
    with pytest.raises(ValueError, match="dtype"):
        SaliencyMemory(4, (8, 8), dtype="int8")
    with pytest.raises(TypeError, match="SaliencyMemory"):
        MemorySaliency("memory")
    memory = SaliencyMemory(4, (8, 8))
    with pytest.raises(ValueError, match="maps must be"):
        memory.write(identity_geometry(torch.tensor([0]), (8, 8)), torch.ones(1, 4, 4))
    with pytest.raises(TypeError, match="BatchGeometry"):
        memory.bind((torch.tensor([0]),))


# --------------------------------------------------------------------------- two gloo ranks


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        memory = SaliencyMemory(8, (4, 4), dtype="float16")
        memory.distributed = True
        index = torch.tensor([rank, 4 + rank])                      # each rank sees its own samples
        maps = torch.arange(32.0).view(2, 4, 4) + 10 * rank + 1
        memory.write(identity_geometry(index, (4, 4)), maps)
        torch.save({"maps": memory.maps, "written": memory.written, "seen": memory._seen},
                   f"{result_file}.{rank}")
        dist.barrier()      # both ranks are done before either tears the group down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_writes_are_all_gathered_so_every_rank_holds_the_whole_memory():
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as folder:
        init_file, result = os.path.join(folder, "init"), os.path.join(folder, "memory")
        mp.spawn(_ddp_worker, args=(2, init_file, result), nprocs=2, join=True)
        states = [torch.load(f"{result}.{rank}", weights_only=True) for rank in range(2)]
    assert torch.equal(states[0]["maps"], states[1]["maps"])
    assert states[0]["written"].tolist() == [True, True, False, False, True, True, False, False]
    assert states[1]["seen"].tolist() == states[0]["written"].tolist()
    for rank in range(2):
        maps = torch.arange(32.0).view(2, 4, 4) + 10 * rank + 1
        expected = (maps / maps.amax(dim=(1, 2), keepdim=True)).half()
        assert torch.equal(states[0]["maps"][[rank, 4 + rank]], expected)


def test_the_memory_itself_is_a_saliency_source_with_its_named_fallback():
    import keepmix
    memory = keepmix.SaliencyMemory(4, (16, 16), dtype="float32", fallback=_Counting())
    geometry = identity_geometry(torch.arange(4), (16, 16))
    images = torch.rand(4, 3, 16, 16) + 1.0
    keep = KeepCutout(6, saliency=memory, generator=torch.Generator().manual_seed(0))
    with memory.batch(geometry):
        keep(images, torch.tensor([0, 1, 2, 0]))
    assert keep.last_stats["memory_fallback"].all() and memory._reader.fallback.calls == 1
    salient = torch.zeros(4, 16, 16)
    salient[:, :, :8] = 1.0
    memory.write(geometry, salient)
    mixer = GuidedMixup(3, saliency=memory, mix_prob=1.0, generator=torch.Generator().manual_seed(0))
    with memory.batch(geometry):
        mixer(images, torch.tensor([0, 1, 2, 0]))
    assert not mixer.last_stats["memory_fallback"].any() and memory._reader.fallback.calls == 1
    assert MemoryPairing(memory).saliency is memory._reader
