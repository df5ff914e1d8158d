"""Mixers against their definitions: λ distributions, boxes, CAM weights, hooks, pairing, soft targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
import torch.nn.functional as F

import keepmix.pairing
from keepmix.losses import soft_target_cross_entropy
from keepmix.mixers import (AttentiveCutMix, CutMix, ManifoldMixup, Mixup, SaliencyMix, SnapMix, clipped_boxes,
                            resize_boxes_into)
from keepmix.models import resnet18_cifar
from keepmix.pairing import greedy_pairing, saliency_distance
from keepmix.saliency import gaussian_blur, normalize_sum, spectral_residual


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def constant_batch(batch: int, height: int, width: int, channels: int = 1) -> torch.Tensor:
    """Image i is the constant i + 1: every output pixel tells which source it came from."""
    return (torch.arange(batch, dtype=torch.float32) + 1).view(-1, 1, 1, 1).expand(batch, channels, height,
                                                                                  width).clone()


def clipped_length(centre: int, length: int, size: int) -> int:
    start = centre - length // 2
    return max(0, min(start + length, size) - max(start, 0))


def check_pixel_shares(out: torch.Tensor, soft: torch.Tensor, partner: torch.Tensor) -> None:
    """Soft targets of constant images: row i puts on class i the share of its own pixels and on
    class p(i) the share of its partner's pixels — nothing else."""
    batch = out.shape[0]
    own = (out[:, 0] == (torch.arange(batch) + 1).view(-1, 1, 1).float()).float().mean(dim=(1, 2))
    theirs = (out[:, 0] == (partner + 1).view(-1, 1, 1).float()).float().mean(dim=(1, 2))
    assert torch.allclose(own + theirs, torch.ones(batch))
    expected = torch.zeros_like(soft)
    expected[torch.arange(batch), torch.arange(batch)] += own
    expected[torch.arange(batch), partner] += theirs
    assert torch.allclose(soft, expected, atol=1e-6)
    assert torch.allclose(soft.sum(dim=1), torch.ones(batch), atol=1e-6)


class IdentityTeacher(nn.Module):
    """Feature map = the image itself: attention = the channel mean of the image, pooled."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def features(self, x):
        return x * self.scale

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


# --------------------------------------------------------------------------- Mixup


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_lambda_is_beta_alpha_alpha(alpha):
    n = 20000
    op = Mixup(2, alpha, generator=gen(1))
    op(torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))
    lam = op.last_stats["lam"].double()
    var = 1 / (4 * (2 * alpha + 1))
    assert abs(float(lam.mean()) - 0.5) < 4 * math.sqrt(var / n)
    # the sample variance of a Beta has sd ≈ sqrt((m4 − var²)/n); bounded loosely by 2·var/sqrt(n)
    assert abs(float(lam.var()) - var) < 4 * 2 * var / math.sqrt(n)
    assert len(torch.unique(lam)) > 0.99 * n  # one λ per image


def test_mixup_pixels_and_targets_use_the_same_per_image_lambda():
    x = constant_batch(16, 3, 4)
    y = torch.arange(16)
    out, soft = Mixup(16, generator=gen(2))(x, y)
    op_stats = Mixup(16, generator=gen(2))
    op_stats(x, y)
    lam, partner = op_stats.last_stats["lam"], op_stats.last_stats["partner"]
    assert not torch.any(partner == torch.arange(16))  # a derangement
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
    assert torch.allclose(out, expected)
    # λ recovered from the pixels equals the label weight
    c_own, c_partner = torch.arange(16.0) + 1, partner.float() + 1
    lam_pixels = (out[:, 0, 0, 0] - c_partner) / (c_own - c_partner)
    assert torch.allclose(soft[torch.arange(16), torch.arange(16)], lam_pixels, atol=1e-5)
    assert torch.allclose(soft[torch.arange(16), partner], 1 - lam_pixels, atol=1e-5)
    assert torch.allclose(soft.sum(dim=1), torch.ones(16))


def test_mixup_per_image_probability_leaves_unselected_images_clean():
    n = 4000
    x = torch.randn(n, 1, 2, 2)
    y = torch.randint(0, 5, (n,))
    op = Mixup(5, prob=0.3, generator=gen(3))
    out, soft = op(x, y)
    mixed = op.last_stats["mixed"]
    assert abs(float(mixed.float().mean()) - 0.3) < 4 * math.sqrt(0.21 / n)
    assert torch.equal(out[~mixed], x[~mixed])
    assert torch.equal(soft[~mixed], F.one_hot(y[~mixed], 5).float())
    assert torch.all(op.last_stats["lam"][~mixed] == 1)


def test_mixup_uint8_mixes_in_float_and_rounds_back():
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    op = Mixup(3, generator=gen(4))
    out, _ = op(x, torch.zeros(8, dtype=torch.long))
    lam, partner = op.last_stats["lam"].view(-1, 1, 1, 1), op.last_stats["partner"]
    expected = (lam * x.float() + (1 - lam) * x[partner].float()).round()
    assert out.dtype == torch.uint8 and (out.float() - expected).abs().max() <= 1


# --------------------------------------------------------------------------- CutMix


def test_cutmix_box_is_centred_anywhere_clipped_and_labels_equal_the_area_kept():
    batch, height, width = 24, 13, 11
    x = constant_batch(batch, height, width)
    op = CutMix(batch, generator=gen(10))
    out, soft = op(x, torch.arange(batch))
    stats = op.last_stats
    check_pixel_shares(out, soft, stats["partner"])
    cut = torch.sqrt(1 - stats["lam_drawn"].double())
    for b in range(batch):
        cy, cx = stats["centre"][b].tolist()
        h, w = round(float(cut[b]) * height), round(float(cut[b]) * width)
        ref = torch.zeros(height, width, dtype=torch.bool)
        ref[max(cy - h // 2, 0):max(cy - h // 2 + h, 0), max(cx - w // 2, 0):max(cx - w // 2 + w, 0)] = True
        assert torch.equal(out[b, 0] != b + 1, ref)
        assert abs(float(stats["lam"][b]) - (1 - ref.float().mean())) < 1e-6


def test_cutmix_lambda_distributions_drawn_and_corrected(chi2_pvalue):
    n, height, width = 20000, 16, 12
    op = CutMix(2, alpha=1.0, generator=gen(11))
    op(torch.zeros(n, 1, height, width), torch.zeros(n, dtype=torch.long))
    stats = op.last_stats
    drawn = stats["lam_drawn"].double()
    assert abs(float(drawn.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(float(drawn.var()) - 1 / 12) < 0.005
    # centres uniform over the image
    assert chi2_pvalue(np.bincount(stats["centre"][:, 0].numpy(), minlength=height)) > 1e-3
    assert chi2_pvalue(np.bincount(stats["centre"][:, 1].numpy(), minlength=width)) > 1e-3
    # corrected λ: E[λ | λ̂] = 1 − E[clipped rows]·E[clipped cols]/(HW) over uniform centres
    cut = torch.sqrt(1 - drawn)
    hs, ws = (cut * height).round().long(), (cut * width).round().long()
    rows = torch.tensor([np.mean([clipped_length(c, h, height) for c in range(height)]) for h in range(height + 1)])
    cols = torch.tensor([np.mean([clipped_length(c, w, width) for c in range(width)]) for w in range(width + 1)])
    conditional = 1 - rows[hs] * cols[ws] / (height * width)
    lam = stats["lam"].double()
    diff = lam - conditional
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    # continuous limit 1 − (1/2 − 1/5 + 1/48) ≈ 0.679 (the corrected mean is not 1/2: clipping shrinks boxes)
    assert abs(float(lam.mean()) - (1 - (0.5 - 0.2 + 1 / 48))) < 0.03
    assert len(torch.unique(stats["lam_drawn"])) > 0.99 * n


def test_cutmix_uncorrected_lambda_is_the_drawn_one():
    x = constant_batch(6, 8, 8)
    op = CutMix(6, correct_lam=False, generator=gen(12))
    _, soft = op(x, torch.arange(6))
    assert torch.allclose(soft[torch.arange(6), torch.arange(6)], op.last_stats["lam_drawn"])


def test_cutmix_unselected_images_are_untouched():
    x = torch.randn(500, 1, 8, 8)
    op = CutMix(3, prob=0.4, generator=gen(13))
    out, soft = op(x, torch.zeros(500, dtype=torch.long))
    mixed = op.last_stats["mixed"]
    assert torch.equal(out[~mixed], x[~mixed]) and torch.all(op.last_stats["lam"][~mixed] == 1)
    assert abs(float(mixed.float().mean()) - 0.4) < 0.1


# --------------------------------------------------------------------------- SaliencyMix


def test_saliencymix_box_is_centred_on_each_source_saliency_peak():
    batch, height, width = 20, 15, 12
    x = constant_batch(batch, height, width)
    g = gen(20)
    peaks = torch.stack([torch.randint(0, height, (batch,), generator=g),
                         torch.randint(0, width, (batch,), generator=g)], 1)
    maps = torch.rand(batch, height, width, generator=g) * 0.5
    maps[torch.arange(batch), peaks[:, 0], peaks[:, 1]] = 1.0
    op = SaliencyMix(batch, saliency=None, generator=gen(21))
    out, soft = op(x, torch.arange(batch), saliency_maps=maps)
    stats = op.last_stats
    partner = stats["partner"]
    assert torch.equal(stats["peak"], peaks[partner])
    check_pixel_shares(out, soft, partner)
    cut = torch.sqrt(1 - stats["lam_drawn"].double())
    for b in range(batch):
        cy, cx = peaks[partner[b]].tolist()  # the source's peak, not the target's
        h, w = round(float(cut[b]) * height), round(float(cut[b]) * width)
        ref = torch.zeros(height, width, dtype=torch.bool)
        ref[max(cy - h // 2, 0):max(cy - h // 2 + h, 0), max(cx - w // 2, 0):max(cx - w // 2 + w, 0)] = True
        assert torch.equal(out[b, 0] != b + 1, ref)
        assert torch.all(out[b, 0][ref] == partner[b] + 1)  # pasted from the source at the same place
    assert len({tuple(p) for p in stats["box"].tolist()}) > batch // 2  # per-sample boxes


def test_saliencymix_default_is_spectral_residual_and_accepts_uint8():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    op = SaliencyMix(4, generator=gen(22))
    out, soft = op(x, torch.randint(0, 4, (6,)))
    maps = spectral_residual(x)
    peak = maps.flatten(1).argmax(dim=1)
    partner = op.last_stats["partner"]
    assert torch.equal(op.last_stats["peak"], torch.stack([peak // 16, peak % 16], 1)[partner])
    assert out.dtype == torch.uint8 and torch.allclose(soft.sum(1), torch.ones(6))


# --------------------------------------------------------------------------- SnapMix


def brute_force_spm(model, image, soft_target, size):
    """CAM of one image for its (soft) label: Σ_c (y W)_c F_c, bilinear to size, min 0, sum 1 (float64)."""
    model.eval()
    with torch.no_grad():
        fmap = model.features(image.unsqueeze(0))[0].double()
    weights = soft_target.double() @ model.classifier.weight.detach().double()
    cam = (weights.view(-1, 1, 1) * fmap).sum(dim=0)
    cam = F.interpolate(cam.view(1, 1, *cam.shape), size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return cam / cam.sum()


@pytest.mark.parametrize("soft_input", [False, True])
def test_snapmix_label_weights_are_cam_mass_shares(make_tiny_net, soft_input):
    model = make_tiny_net(num_classes=5)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch, height, width = 6, 12, 10
    x = torch.randn(batch, 3, height, width, generator=gen(30))
    y = torch.randint(0, 5, (batch,), generator=gen(31))
    targets = torch.softmax(torch.randn(batch, 5, generator=gen(32)), 1) if soft_input else y
    op = SnapMix(model, 5, alpha=1.0, generator=gen(33))
    out, soft = op(x, targets)
    stats = op.last_stats
    partner = stats["partner"]
    onehot = targets if soft_input else F.one_hot(y, 5).float()
    spm = [brute_force_spm(model, x[b], onehot[b], (height, width)) for b in range(batch)]
    model.train()
    for b in range(batch):
        ta, la, ha, wa = stats["box_a"][b].tolist()
        tb, lb, hb, wb = stats["box_b"][b].tolist()
        if not (ha * wa and hb * wb):                      # an empty box: the image is not mixed
            assert not bool(stats["mixed"][b]) and torch.allclose(soft[b], onehot[b].float(), atol=1e-6)
            continue
        rho_a = 1 - float(spm[b][ta:ta + ha, la:la + wa].sum())
        rho_b = float(spm[partner[b]][tb:tb + hb, lb:lb + wb].sum())
        assert abs(float(stats["rho_a"][b]) - rho_a) < 1e-5
        assert abs(float(stats["rho_b"][b]) - rho_b) < 1e-5
        if rho_a + rho_b > 1e-9:
            expected = (rho_a * onehot[b] + rho_b * onehot[partner[b]]) / (rho_a + rho_b)
        else:  # no CAM mass on either side: the maps' ε is uniform there, so the areas decide
            outside_a, inside_b = height * width - ha * wa, hb * wb
            kept = outside_a / (outside_a + inside_b)
            expected = kept * onehot[b] + (1 - kept) * onehot[partner[b]]
        assert torch.allclose(soft[b], expected.float(), atol=3e-4)
    assert torch.allclose(soft.sum(dim=1), torch.ones(batch), atol=1e-5)
    # the CAM pass left the model exactly as found
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_snapmix_pastes_the_partner_box_resized_into_its_own_box(make_tiny_net):
    model = make_tiny_net(num_classes=3)
    batch, height, width = 8, 14, 11
    x = torch.randn(batch, 3, height, width, generator=gen(34))
    op = SnapMix(model, 3, alpha=1.0, generator=gen(35))
    out, _ = op(x, torch.randint(0, 3, (batch,)))
    stats = op.last_stats
    assert stats["mixed"].sum() >= 4
    for b in range(batch):
        ta, la, ha, wa = stats["box_a"][b].tolist()
        tb, lb, hb, wb = stats["box_b"][b].tolist()
        inside = torch.zeros(height, width, dtype=torch.bool)
        inside[ta:ta + ha, la:la + wa] = True
        assert torch.equal(out[b][:, ~inside], x[b][:, ~inside])
        if ha * wa:
            crop = x[stats["partner"][b], :, tb:tb + hb, lb:lb + wb].unsqueeze(0)
            ref = F.interpolate(crop, size=(ha, wa), mode="bilinear", align_corners=False)[0]
            assert torch.allclose(out[b, :, ta:ta + ha, la:la + wa], ref, atol=1e-5)
    # the two boxes are independent in size and position
    assert not torch.equal(stats["box_a"], stats["box_b"])


def test_resize_boxes_into_matches_interpolate_on_tall_and_wide_boxes():
    src = torch.randn(3, 2, 9, 9, generator=gen(36))
    box_src = tuple(torch.tensor(v) for v in ([0, 2, 4], [1, 0, 3], [9, 3, 1], [4, 9, 6]))
    box_dst = tuple(torch.tensor(v) for v in ([2, 0, 1], [0, 5, 2], [5, 2, 8], [9, 4, 3]))
    out = resize_boxes_into(src, box_src, box_dst, (9, 9))
    for b in range(3):
        t, l, h, w = (int(v[b]) for v in box_src)
        t2, l2, h2, w2 = (int(v[b]) for v in box_dst)
        ref = F.interpolate(src[b:b + 1, :, t:t + h, l:l + w], size=(h2, w2), mode="bilinear",
                            align_corners=False)[0]
        assert torch.allclose(out[b, :, t2:t2 + h2, l2:l2 + w2], ref, atol=1e-5)


def test_snapmix_raw_weights_reproduce_the_snapmix_loss(make_tiny_net):
    model = make_tiny_net(num_classes=4)
    x = torch.randn(6, 3, 8, 8, generator=gen(37))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    op = SnapMix(model, 4, normalize=False, generator=gen(38))
    _, soft = op(x, y)
    rho_a, rho_b, partner = op.last_stats["rho_a"], op.last_stats["rho_b"], op.last_stats["partner"]
    logits = torch.randn(6, 4, generator=gen(39))
    per_sample = soft_target_cross_entropy(logits, soft, reduction="none")
    snapmix = rho_a * F.cross_entropy(logits, y, reduction="none") + \
        rho_b * F.cross_entropy(logits, y[partner], reduction="none")
    assert torch.allclose(per_sample, snapmix, atol=1e-5)


def test_snapmix_features_and_classifier_overrides():
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    head = nn.Linear(4, 3)
    model = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    with pytest.raises(TypeError, match="features"):
        SnapMix(model, 3)
    op = SnapMix(model, 3, features=body, classifier=head, generator=gen(40))
    _, soft = op(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert torch.allclose(soft.sum(1), torch.ones(4), atol=1e-6)
    with pytest.raises(TypeError, match="uint8|floating"):
        op(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))


# --------------------------------------------------------------------------- Attentive CutMix


@pytest.mark.parametrize("size", [(28, 28), (30, 23)])
def test_attentive_cutmix_pastes_the_partners_top_k_teacher_cells(size):
    height, width = size
    batch = 8
    x = torch.rand(batch, 3, height, width, generator=gen(50)) + 1.0
    op = AttentiveCutMix(IdentityTeacher(), 10, top_k=6, grid=7, generator=gen(51))
    out, soft = op(x, torch.arange(batch))
    partner = op.last_stats["partner"]
    rows = [math.ceil(r * height / 7) for r in range(8)]
    cols = [math.ceil(c * width / 7) for c in range(8)]
    for b in range(batch):
        source = x[partner[b]].mean(dim=0)
        # adaptive average pooling bins: [⌊iH/g⌋, ⌈(i+1)H/g⌉)
        attention = torch.tensor([[float(source[r * height // 7:-(-(r + 1) * height // 7),
                                                c * width // 7:-(-(c + 1) * width // 7)].mean())
                                   for c in range(7)] for r in range(7)])
        top = set(attention.flatten().topk(6).indices.tolist())
        ref = torch.zeros(height, width, dtype=torch.bool)
        for cell in top:
            r, c = divmod(cell, 7)
            ref[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = True
        assert torch.equal((out[b] != x[b]).any(dim=0), ref)
        assert torch.equal(out[b][:, ref], x[partner[b]][:, ref])
        assert torch.equal(op.last_stats["cells"][b].flatten().nonzero().flatten().sort().values,
                           torch.tensor(sorted(top)))
        lam = 1 - float(ref.float().mean())
        assert abs(float(soft[b, b]) - lam) < 1e-6 and abs(float(soft[b, partner[b]]) - (1 - lam)) < 1e-6
    if size == (28, 28):
        assert torch.allclose(op.last_stats["lam"], torch.full((batch,), 1 - 6 / 49))


def test_attentive_cutmix_teacher_output_as_feature_map_and_left_unchanged():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    teacher.train()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    op = AttentiveCutMix(teacher, 3, top_k=2, grid=4, generator=gen(52))
    _, soft = op(torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert teacher.training and all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert torch.allclose(op.last_stats["lam"], torch.full((5,), 1 - 2 / 16))
    assert torch.allclose(soft.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="feature map"):
        AttentiveCutMix(nn.Flatten(), 3)(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))


# --------------------------------------------------------------------------- Manifold Mixup


def test_manifold_mixup_mixes_the_chosen_layer_once(make_tiny_net):
    model = make_tiny_net(num_classes=4).eval()
    x = torch.randn(6, 3, 8, 8, generator=gen(60))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        clean_hidden = model.block1(model.stem(x))
        clean_logits = model(x)
    seen = []
    model.drop.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    op = ManifoldMixup(model, 4, alpha=2.0, layers=(2,), generator=gen(61))  # layer 2 = block1's output
    images, soft = op(x, y)
    assert images is x and op.armed
    lam, partner = op.last_stats["lam"], op.last_stats["partner"]
    with torch.no_grad():
        mixed_logits = model(images)
    assert not op.armed
    weight = lam.view(-1, 1, 1, 1)
    assert torch.allclose(seen[0], weight * clean_hidden + (1 - weight) * clean_hidden[partner], atol=1e-6)
    assert not torch.allclose(mixed_logits, clean_logits)
    with torch.no_grad():
        again = model(images)
    assert torch.allclose(seen[1], clean_hidden) and torch.allclose(again, clean_logits)
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert torch.allclose(soft[torch.arange(6), y], lam + (1 - lam) * (y[partner] == y).float())


def test_manifold_mixup_input_layer_mixes_the_images_and_arms_nothing(make_tiny_net):
    model = make_tiny_net()
    x = torch.randn(5, 3, 6, 6, generator=gen(61))
    op = ManifoldMixup(model, 5, layers=(0,), generator=gen(62))
    images, _ = op(x, torch.arange(5))
    lam, partner = op.last_stats["lam"].view(-1, 1, 1, 1), op.last_stats["partner"]
    assert not op.armed and int(op.last_stats["layer"]) == 0
    assert torch.allclose(images, lam * x + (1 - lam) * x[partner], atol=1e-6)


def test_manifold_mixup_layer_is_uniform_over_the_eligible_layers(make_tiny_net, chi2_pvalue):
    model = make_tiny_net()
    op = ManifoldMixup(model, 5, layers=(0, 1, 3), generator=gen(63))
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    layers = []
    for _ in range(240):
        op(x, y)
        layers.append(op.layers[int(op.last_stats["layer"])])
    op.disarm()
    assert set(layers) == {0, 1, 3}
    assert chi2_pvalue([layers.count(k) for k in (0, 1, 3)]) > 1e-3


def test_manifold_mixup_guards_and_supported_models(make_tiny_net):
    model = make_tiny_net()
    op = ManifoldMixup(model, 5, layers=(1,), generator=gen(64))
    op(torch.randn(4, 3, 4, 4), torch.arange(4))
    with pytest.raises(RuntimeError, match="batch of 4"):
        model(torch.randn(3, 3, 4, 4))
    assert not op.armed
    op(torch.randn(4, 3, 4, 4), torch.arange(4))
    op(torch.randn(4, 3, 4, 4), torch.arange(4))  # a new call replaces the pending hook
    assert sum(len(b._forward_hooks) for b in op.blocks) == 1
    op.disarm()
    assert sum(len(b._forward_hooks) for b in op.blocks) == 0
    resnet = resnet18_cifar(10)
    ManifoldMixup(resnet, 10, layers=(0, 1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="layers"):
        ManifoldMixup(resnet, 10, layers=(6,))
    with pytest.raises(TypeError, match="hidden_blocks"):
        ManifoldMixup(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="layers"):
        ManifoldMixup(model, 5, layers=(1, 1))


def test_manifold_mixup_trains_through_the_hook(make_tiny_net):
    model = make_tiny_net(num_classes=3)
    op = ManifoldMixup(model, 3, layers=(3,), generator=gen(65))
    x, soft = op(torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0]))
    loss = soft_target_cross_entropy(model(x), soft)
    loss.backward()
    assert model.stem[0].weight.grad is not None and torch.isfinite(loss)


# --------------------------------------------------------------------------- every mixer


def make_mixer(name, model, generator, pairing="random", num_classes=5):
    if name == "mixup":
        return Mixup(num_classes, pairing=pairing, generator=generator)
    if name == "cutmix":
        return CutMix(num_classes, pairing=pairing, generator=generator)
    if name == "saliencymix":
        return SaliencyMix(num_classes, pairing=pairing, generator=generator)
    if name == "snapmix":
        return SnapMix(model, num_classes, pairing=pairing, generator=generator)
    if name == "attentive":
        return AttentiveCutMix(model, num_classes, top_k=3, grid=4, pairing=pairing, generator=generator)
    return ManifoldMixup(model, num_classes, layers=(0,), pairing=pairing, generator=generator)


MIXERS = ["mixup", "cutmix", "saliencymix", "snapmix", "attentive", "manifold"]


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_soft_targets_sum_to_one_and_draws_per_sample(name, make_tiny_net):
    model = make_tiny_net(num_classes=5).eval()
    x = torch.randn(32, 3, 16, 16, generator=gen(70))
    y = torch.randint(0, 5, (32,), generator=gen(71))
    op = make_mixer(name, model, gen(72))
    out, soft = op(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert soft.dtype == torch.float32 and soft.shape == (32, 5)
    assert torch.allclose(soft.sum(dim=1), torch.ones(32), atol=1e-5) and torch.all(soft >= 0)
    stats = op.last_stats
    assert not torch.any(stats["partner"] == torch.arange(32))
    if name == "attentive":
        assert len({tuple(c.flatten().tolist()) for c in stats["cells"]}) > 8
    else:
        assert len(torch.unique(stats["lam"])) > 16
    # soft-target inputs are accepted and mixed the same way
    op2 = make_mixer(name, model, gen(72))
    _, soft2 = op2(x, F.one_hot(y, 5).float())
    assert torch.allclose(soft, soft2, atol=1e-6)


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_is_seeded_bit_identically(name, make_tiny_net):
    model = make_tiny_net(num_classes=5).eval()
    x = torch.randn(8, 3, 16, 16, generator=gen(73))
    y = torch.randint(0, 5, (8,), generator=gen(74))
    a = make_mixer(name, model, gen(5))(x, y)
    b = make_mixer(name, model, gen(5))(x, y)
    c = make_mixer(name, model, gen(6))(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_greedy_pairing_goes_through_guidedmixups_greedy_pairing(name, make_tiny_net, monkeypatch):
    model = make_tiny_net(num_classes=5).eval()
    calls = []

    def spy(distance):
        calls.append(distance)
        return greedy_pairing(distance)

    monkeypatch.setattr(keepmix.pairing, "greedy_pairing", spy)
    x = torch.randn(8, 3, 16, 16, generator=gen(75))
    op = make_mixer(name, model, gen(76), pairing="greedy")
    op(x, torch.randint(0, 5, (8,)))
    assert len(calls) == 1 and calls[0].shape == (8, 8)
    assert torch.equal(op.last_stats["partner"], greedy_pairing(calls[0]))


@pytest.mark.parametrize("name", ["mixup", "cutmix", "manifold"])
def test_greedy_pairing_without_saliency_uses_blurred_normalised_spectral_maps(name, make_tiny_net):
    x = torch.randn(10, 3, 16, 16, generator=gen(77))
    op = make_mixer(name, make_tiny_net(), gen(78), pairing="greedy")
    op(x, torch.randint(0, 5, (10,)))
    maps = normalize_sum(gaussian_blur(spectral_residual(x), 7, 3.0))
    assert torch.equal(op.last_stats["partner"], greedy_pairing(saliency_distance(maps)))


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_takes_a_pairing_callable(name, make_tiny_net):
    received = []

    def reverse(maps):
        received.append(maps)
        return torch.arange(maps.shape[0] - 1, -1, -1)

    x = torch.randn(7, 3, 16, 16, generator=gen(79))
    op = make_mixer(name, make_tiny_net().eval(), gen(80), pairing=reverse)
    op(x, torch.randint(0, 5, (7,)))
    assert torch.equal(op.last_stats["partner"], torch.arange(6, -1, -1))
    assert received[0].shape[0] == 7 and torch.allclose(received[0].sum(dim=(1, 2)), torch.ones(7))


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_rejects_bad_targets_and_leaves_a_single_image_alone(name, make_tiny_net):
    model = make_tiny_net(num_classes=5).eval()
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="targets"):
        make_mixer(name, model, gen(1))(x, None)
    with pytest.raises(ValueError, match="num_classes"):
        make_mixer(name, model, gen(1), num_classes=None)(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="classes"):
        make_mixer(name, model, gen(1))(x, torch.full((4, 3), 1 / 3))
    one = torch.randn(1, 3, 8, 8)
    out, soft = make_mixer(name, model, gen(1))(one, torch.tensor([2]))
    assert torch.equal(out, one) and torch.equal(soft, F.one_hot(torch.tensor([2]), 5).float())


@pytest.mark.parametrize("make, error", [
    (lambda: Mixup(5, alpha=0), ValueError), (lambda: Mixup(5, alpha=-1), ValueError),
    (lambda: Mixup(0), ValueError), (lambda: Mixup(2.5), ValueError), (lambda: CutMix(5, prob=1.2), ValueError),
    (lambda: CutMix(5, pairing="farthest"), ValueError), (lambda: CutMix(5, pairing=3), TypeError),
    (lambda: SaliencyMix(5, saliency="opencv"), ValueError), (lambda: SnapMix("model"), TypeError),
    (lambda: SnapMix(resnet18_cifar(2), bn="batch"), ValueError),
    (lambda: AttentiveCutMix(resnet18_cifar(2), top_k=50), ValueError),
    (lambda: AttentiveCutMix(resnet18_cifar(2), grid=0), ValueError),
    (lambda: AttentiveCutMix(lambda x: x), TypeError),
    (lambda: ManifoldMixup(resnet18_cifar(2), layers=()), TypeError),
    (lambda: ManifoldMixup(resnet18_cifar(2), layers=(0.5,)), TypeError),
])
def test_mixer_arguments_are_checked(make, error):
    with pytest.raises(error):
        make()


def test_clipped_boxes_hand_computed():
    top, left, h, w = clipped_boxes(torch.tensor([0, 5, 9]), torch.tensor([0, 5, 2]), torch.tensor([4, 3, 6]),
                                    torch.tensor([5, 10, 0]), (10, 10))
    # rows [−2, 2) → [0, 2); [4, 7); [6, 12) → [6, 10); cols [−2, 3) → [0, 3); [0, 10); empty
    assert top.tolist() == [0, 4, 6] and h.tolist() == [2, 3, 4]
    assert left.tolist() == [0, 0, 2] and w.tolist() == [3, 10, 0]


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(2, 7), height=st.integers(1, 12), width=st.integers(1, 12),
       alpha=st.floats(0.1, 4.0), prob=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16),
       kind=st.sampled_from(["cutmix", "saliencymix"]))
def test_box_mixers_label_weights_equal_pixel_shares_for_any_shape(batch, height, width, alpha, prob, seed, kind):
    x = constant_batch(batch, height, width)
    cls = CutMix if kind == "cutmix" else SaliencyMix
    op = cls(batch, alpha, prob=prob, generator=gen(seed))
    out, soft = op(x, torch.arange(batch))
    check_pixel_shares(out, soft, op.last_stats["partner"])
    assert torch.all(torch.isfinite(soft))


def test_manifold_mixup_layers_by_name_are_the_papers_places():
    """Verma et al. mix at the input and after the first and second residual stage: by name
    ("input", "stages.0", "stages.1") = by number (0, 2, 3); 1 is the stem, not a stage."""
    model = resnet18_cifar(4)
    by_name = ManifoldMixup(model, 4, layers=("input", "stages.0", "stages.1"))
    assert by_name._targets == [None, model.stages[0], model.stages[1]]
    by_number = ManifoldMixup(model, 4, layers=(0, 2, 3))
    assert by_number._targets == by_name._targets
    assert ManifoldMixup(model, 4)._targets == by_name._targets           # the default is the paper's
    with pytest.raises(ValueError, match=r"stage\.0.*did you mean 'stages.0'"):
        ManifoldMixup(model, 4, layers=("stage.0",))
    with pytest.raises(ValueError, match="distinct"):
        ManifoldMixup(model, 4, layers=("input", 0))
    # the named layer is the one mixed: hook on stages.1, its output is λ-mixed with the partner's
    seen = {}
    model.stages[1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach().clone()))
    op = ManifoldMixup(model, 4, layers=("stages.1",), generator=gen(5))
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    model.eval()
    with torch.no_grad():
        clean = {}
        h = model.stages[1].register_forward_hook(lambda m, i, o: clean.setdefault("out", o.detach().clone()))
        model(x)
        h.remove()
        seen.clear()
        op(x, y)
        logits = model(x)
    lam, partner = op.last_stats["lam"], op.last_stats["partner"]
    mixed = torch.lerp(clean["out"][partner], clean["out"], lam.view(-1, 1, 1, 1))
    expected = model.classifier(torch.flatten(model.pool(model.stages[3](model.stages[2](mixed))), 1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
