"""``model: timm:NAME``: the adapter that gives a timm model keepmix's interface (features, classifier,
first block, hidden blocks), tested against stand-in modules shaped like timm's ResNet and ViT (timm is
not needed); the real-timm test runs only where timm is installed."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from keepmix.models import build_model
from keepmix.models.timm_adapter import TimmClassifier
from keepmix.recipes import load_pretrained
from keepmix.saliency import EarlyHead, gradient


class StandInResNet(nn.Module):
    """timm's ResNet surface: conv1/bn1/act1 stem, layer1…layer2, forward_features, get_classifier, feature_info."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)
        self.feature_info = [{"num_chs": 4, "reduction": 2, "module": "act1"},
                             {"num_chs": 8, "reduction": 4, "module": "layer1"},
                             {"num_chs": 16, "reduction": 8, "module": "layer2"}]

    def forward_features(self, x):
        return self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x)))))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


class StandInViT(nn.Module):
    """timm's VisionTransformer surface: patch_embed.grid_size, a class token (num_prefix_tokens 1), blocks.*,
    forward_features returning tokens B×N×D, a head on the class token."""

    def __init__(self, num_classes: int = 1000, dim: int = 8, patch: int = 4, image: int = 16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.patch_embed.grid_size = (image // patch, image // patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.num_prefix_tokens = 1
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(2)])
        self.head = nn.Linear(dim, num_classes)
        self.feature_info = [{"num_chs": dim, "reduction": patch, "module": f"blocks.{i}"} for i in range(2)]

    def forward_features(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.blocks(tokens)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.forward_features(x)[:, 0])


@pytest.fixture
def fake_timm(monkeypatch):
    """A module named ``timm`` whose create_model builds the stand-ins (and records its arguments)."""
    calls = []

    def create_model(name, pretrained=False, num_classes=1000, **kwargs):
        calls.append((name, pretrained, num_classes, kwargs))
        return {"resnet_standin": StandInResNet, "vit_standin": StandInViT}[name](num_classes)

    module = types.SimpleNamespace(create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_timm_names_build_through_create_model_with_the_class_count(fake_timm):
    model = build_model("timm:resnet_standin", 7, drop_rate=0.1)
    assert isinstance(model, TimmClassifier)
    assert fake_timm == [("resnet_standin", False, 7, {"drop_rate": 0.1})]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model.net(x))          # timm's own forward, pooling and head


def test_cnn_adapter_exposes_features_classifier_first_block_and_hidden_blocks(fake_timm):
    model = build_model("timm:resnet_standin", 5)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.features(x), model.net.forward_features(x))
    assert model.classifier is model.net.fc
    assert model.first_block is model.net.layer1        # the first stage at stride 4, the paper's "first block"
    assert model.hidden_blocks() == [model.net.act1, model.net.layer1, model.net.layer2]
    # forward = classifier(pool(features)) for this CNN (what CAM-based ops rely on)
    pooled = model.classifier(torch.flatten(model.pool(model.features(x)), 1))
    torch.testing.assert_close(pooled, model(x))
    # KeepAugment's early head attaches after first_block; saliency runs through the adapter
    head = EarlyHead(model, 5)
    assert head.fc.in_features == 8
    maps = head.saliency(x, torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    assert gradient(model, x, torch.tensor([0, 1])).shape == (2, 32, 32)


def test_vit_tokens_become_a_patch_map_without_the_class_token(fake_timm):
    model = build_model("timm:vit_standin", 3)
    x = torch.randn(2, 3, 16, 16)
    tokens = model.net.forward_features(x)
    fmap = model.features(x)
    assert fmap.shape == (2, 8, 4, 4)
    # patch token k (after the class token) is map position (k // 4, k % 4)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    assert model.first_block is model.net.blocks[0]
    assert model.hidden_blocks() == [model.net.blocks[0], model.net.blocks[1]]
    assert model.classifier is model.net.head


def test_a_local_timm_state_dict_loads_into_the_adapter(fake_timm, tmp_path):
    source = StandInResNet(num_classes=1000)
    path = tmp_path / "resnet.pt"
    torch.save(source.state_dict(), path)                    # timm's own keys, a 1000-class head
    model = build_model("timm:resnet_standin", 5)
    skipped = load_pretrained(model, path)
    assert skipped == ["net.fc.weight", "net.fc.bias"]       # a new head for 5 classes
    assert torch.equal(model.net.layer1[0].weight, source.layer1[0].weight)


def test_without_timm_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="pip install timm"):
        build_model("timm:resnet50", 10)


@pytest.mark.slow
def test_real_timm_resnet50_and_vit():
    timm = pytest.importorskip("timm")
    del timm
    resnet = build_model("timm:resnet50", 10)
    assert resnet.first_block is resnet.net.layer1
    assert resnet.features(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    vit = build_model("timm:vit_tiny_patch16_224", 10)
    assert vit.features(torch.randn(1, 3, 224, 224)).shape == (1, 192, 14, 14)
    assert vit.first_block is vit.net.blocks[0]
