"""Recipes: the YAML ↔ TrainConfig schema, typed overrides, arms, the op registry and building from a config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from keepmix import KeepCutout, SelectivePaste
from keepmix.erase import Cutout
from keepmix.mix import GuidedMixup
from keepmix.policies import AutoAugment
from keepmix.saliency import NormalizedInput
from keepmix.recipes import (BuildContext, TrainConfig, apply_overrides, build_op, build_ops,
                             config_from_dict, config_to_dict, config_to_yaml, expand_arms, find_recipe,
                             list_recipes, load_pretrained, load_recipe, op_names, op_space, parse_override,
                             read_recipe, resolve_op, uses_early_head)
from keepmix.saliency import EarlyHead, GradientSaliency, gradient

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# --------------------------------------------------------------------------- schema


def test_defaults_round_trip_through_dict_and_yaml():
    config = TrainConfig()
    assert config_from_dict(config_to_dict(config)) == config
    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config


def test_nested_values_are_typed_and_ints_accepted_for_floats():
    config = config_from_dict({"optim": {"lr": 1, "milestones": [3, 5]}, "data": {"kwargs": {"clutter": 0.2}}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.milestones == [3, 5]
    assert config.data.kwargs == {"clutter": 0.2}
    assert config.model.name == TrainConfig().model.name  # untouched sections keep their defaults


@pytest.mark.parametrize("data, key", [({"optim": {"lrr": 0.1}}, "optim.lrr"), ({"epochz": 3}, "epochz"),
                                       ({"arms": [{"name": "a", "opz": []}]}, "opz")])
def test_unknown_keys_are_rejected_by_name(data, key):
    with pytest.raises(ValueError, match=key):
        config_from_dict(data)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ValueError, match="did you mean 'optim.lr'"):
        config_from_dict({"optim": {"lrr": 0.1}})


@pytest.mark.parametrize("data, key", [({"optim": {"lr": "fast"}}, "optim.lr"), ({"optim": {"epochs": 1.5}}, "optim.epochs"),
                                       ({"optim": {"nesterov": "yes"}}, "optim.nesterov"), ({"seed": True}, "seed"),
                                       ({"optim": {"milestones": 5}}, "optim.milestones"), ({"data": 3}, "data")])
def test_wrong_types_raise_type_error_naming_the_key(data, key):
    with pytest.raises(TypeError, match=key.replace(".", r"\.")):
        config_from_dict(data)


@pytest.mark.parametrize("data, key", [({"optim": {"schedule": "linear"}}, "optim.schedule"), ({"amp": "fp8"}, "amp"),
                                       ({"optim": {"momentum": 0.0, "nesterov": True}}, "optim.nesterov"),
                                       ({"optim": {"milestones": [5, 3]}}, "optim.milestones"),
                                       ({"data": {"fraction": 1.5}}, "data.fraction"), ({"device": "tpu"}, "device"),
                                       ({"ops": [{"length": 3}]}, "ops"), ({"name": "../x"}, "name"),
                                       ({"arms": [{"name": "a"}, {"name": "a"}]}, "arms")])
def test_out_of_range_values_raise_value_error_naming_the_key(data, key):
    with pytest.raises(ValueError, match=key):
        config_from_dict(data)


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("text, key, value", [("optim.lr=0.05", "optim.lr", 0.05), ("optim.milestones=[1, 2]",
                                              "optim.milestones", [1, 2]), ("data.root=null", "data.root", None),
                                              ("name=run-1", "name", "run-1"), ("progress=false", "progress", False),
                                              ("model.kwargs.depth=20", "model.kwargs.depth", 20),
                                              ("description=a=b", "description", "a=b")])
def test_parse_override_reads_yaml_values(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_are_typed_by_the_field():
    base = TrainConfig()
    config = apply_overrides(base, ["optim.lr=0.05", "optim.epochs=7", "data.kwargs.clutter=0.1", "seed=3"])
    assert (config.optim.lr, config.optim.epochs, config.data.kwargs["clutter"], config.seed) == (0.05, 7, 0.1, 3)
    assert base.optim.epochs == TrainConfig().optim.epochs  # the original is untouched
    with pytest.raises(TypeError, match="optim.epochs"):
        apply_overrides(base, ["optim.epochs=many"])
    with pytest.raises(ValueError, match="optim.lrr"):
        apply_overrides(base, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(base, ["optim.lr"])


def test_overrides_reach_into_arms_by_index():
    config = config_from_dict({"arms": [{"name": "a", "ops": [{"name": "cutout", "length": 8}]}]})
    changed = apply_overrides(config, ["arms.0.ops.0.length=12", "arms.0.set={seed: 4}"])
    assert changed.arms[0].ops[0]["length"] == 12 and changed.arms[0].set == {"seed": 4}
    with pytest.raises(ValueError, match="list of 1"):
        apply_overrides(config, ["arms.3.name=b"])


# --------------------------------------------------------------------------- files


def test_extends_deep_merges_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, epochs: 5, milestones: [1, 2]}\nseed: 1\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {lr: 0.2, milestones: [3]}\n")
    config = load_recipe(tmp_path / "child.yaml", ["optim.epochs=9"])
    assert (config.optim.lr, config.optim.epochs, config.optim.milestones, config.seed) == (0.2, 9, [3], 1)


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        read_recipe(tmp_path / "a.yaml")


def test_recipe_must_be_a_mapping(tmp_path):
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_recipe(tmp_path / "bad.yaml")


def test_find_recipe_by_name_and_missing():
    assert find_recipe("default") == RECIPES / "default.yaml"
    with pytest.raises(FileNotFoundError, match="no_such_recipe"):
        find_recipe("no_such_recipe")
    names = list_recipes()
    assert "default" in names and not any(Path(n).name.startswith("_") for n in names)


# --------------------------------------------------------------------------- arms


def test_expand_arms_applies_ops_and_sets():
    config = config_from_dict({"name": "cmp", "ops": [{"name": "cutout"}], "arms": [
        {"name": "plain"}, {"name": "keep", "ops": [{"name": "keep_cutout", "saliency": "model"}],
                            "set": {"optim.lr": 0.01, "seed": 5}}]})
    arms = dict(expand_arms(config))
    assert list(arms) == ["plain", "keep"]
    assert arms["plain"].ops == [{"name": "cutout"}] and arms["plain"].name == "cmp/plain"
    assert arms["keep"].ops[0]["name"] == "keep_cutout"
    assert (arms["keep"].optim.lr, arms["keep"].seed) == (0.01, 5)
    assert all(not c.arms for c in arms.values())
    assert [n for n, _ in expand_arms(config, ["keep"])] == ["keep"]
    with pytest.raises(ValueError, match="unknown arm"):
        expand_arms(config, ["nope"])
    with pytest.raises(ValueError, match="may not change"):
        expand_arms(config_from_dict({"arms": [{"name": "a", "set": {"name": "x"}}]}))


def test_config_without_arms_expands_to_itself():
    config = TrainConfig()
    assert expand_arms(config) == [("", config)]
    with pytest.raises(ValueError, match="no arms"):
        expand_arms(config, ["a"])


# --------------------------------------------------------------------------- registry and building


def test_registry_finds_ops_by_any_spelling():
    assert resolve_op("KeepCutout")[0] is KeepCutout
    assert resolve_op("keep-cutout")[0] is KeepCutout
    assert resolve_op("keep_cutout")[0] is KeepCutout
    assert resolve_op("auto_augment")[0] is AutoAugment
    assert resolve_op("guided_ap") == (GuidedMixup, {"saliency": "gradient"})
    names = op_names()
    for expected in ("cutout", "keep_cutout", "selective_paste", "guided_mixup", "guided_sr", "mixup", "aug_mix"):
        assert expected in names
    with pytest.raises(ValueError, match="unknown op 'nope'.*keep_cutout"):
        resolve_op("nope")


def _ctx(model=None, **kwargs):
    defaults = dict(model=model, num_classes=5, seed=0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    defaults.update(kwargs)
    return BuildContext(**defaults)


def test_build_op_resolves_model_saliency_num_classes_and_generator(make_tiny_net):
    model = make_tiny_net()
    ctx = _ctx(model)
    keep = build_op({"name": "keep_cutout", "size": 4, "saliency": "model", "scale": 0.5}, ctx)
    assert isinstance(keep, KeepCutout) and keep.size == (4, 4)
    assert isinstance(keep.saliency, GradientSaliency) and keep.saliency.model is model and keep.saliency.scale == 0.5
    mixer = build_op({"name": "guided_ap"}, ctx, "ops[1]")
    assert mixer.num_classes == 5 and mixer.mix_prob == 0.8 and mixer.saliency.model is model
    assert set(ctx.generators) == {"ops[0]", "ops[1]"}
    assert keep.generator is ctx.generators["ops[0]"]


def test_op_generators_are_seeded_by_run_seed_and_path(make_tiny_net):
    def first_draw(seed, path):
        ctx = _ctx(seed=seed)
        op = build_op({"name": "cutout", "length": 2}, ctx, path)
        return torch.rand(4, generator=op.generator)

    assert torch.equal(first_draw(0, "ops[0]"), first_draw(0, "ops[0]"))
    assert not torch.equal(first_draw(0, "ops[0]"), first_draw(1, "ops[0]"))
    assert not torch.equal(first_draw(0, "ops[0]"), first_draw(0, "ops[1]"))


def test_explicit_kwargs_win_over_injected_ones(make_tiny_net):
    op = build_op({"name": "mixup", "num_classes": 7}, _ctx(make_tiny_net()))
    assert op.num_classes == 7


def test_unknown_op_argument_names_op_and_argument():
    with pytest.raises(ValueError, match=r"ops\[0\]: Cutout has no argument\(s\) \['size'\]"):
        build_op({"name": "cutout", "size": 3}, _ctx())


def test_bad_op_value_error_names_the_path():
    with pytest.raises(ValueError, match=r"ops\[0\] \(KeepCutout\).*tau"):
        build_op({"name": "keep_cutout", "tau": 2.0}, _ctx())


def test_model_saliency_without_model_is_an_error():
    with pytest.raises(ValueError, match="needs a model"):
        build_op({"name": "keep_cutout", "saliency": "model"}, _ctx())


def test_early_head_saliency_calls_the_factory_once(make_tiny_net):
    model = make_tiny_net()
    made = []

    def factory():
        if not made:
            made.append(EarlyHead(model, 5))
        return made[0]

    ctx = _ctx(model, early_head=factory)
    specs = [{"name": "keep_cutout", "size": 3, "saliency": "early_head"},
             {"name": "keep_cutout", "size": 3, "saliency": "early_head"}]
    assert uses_early_head(specs) and not uses_early_head([{"name": "keep_cutout", "saliency": "model"}])
    first, second = build_ops(specs, ctx)
    assert len(made) == 1 and first.saliency.head is made[0] and second.saliency.head is made[0]


def test_nested_specs_build_nested_ops_and_raw_space_is_inferred(make_tiny_net):
    model = make_tiny_net()
    ctx = _ctx(model)
    paste = build_op({"name": "selective_paste", "transform": {"name": "auto_augment"}, "size": 3,
                      "saliency": "model"}, ctx)
    assert isinstance(paste, SelectivePaste) and isinstance(paste.transform, AutoAugment)
    assert op_space(paste) == "raw" and op_space(paste.transform) == "raw"
    assert op_space(Cutout(2)) == "normalized"
    assert set(ctx.generators) == {"ops[0]", "ops[0].transform"}
    # the model expects normalised input; a raw-space op's model saliency is taken on the normalised image
    assert isinstance(paste.saliency, NormalizedInput)
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 3])
    expected = gradient(model, (pixels - 0.5) / 0.25, labels)
    assert torch.allclose(paste.saliency(pixels, labels), expected, atol=1e-6)


def test_teacher_mapping_builds_a_frozen_network(tmp_path):
    spec = {"name": "attentive_cut_mix", "teacher": {"model": "resnet_small", "num_classes": 4}, "top_k": 2, "grid": 2}
    # no weights: refused, naming the field (an untrained teacher attends at random)
    with pytest.raises(ValueError, match=r"teacher\.pretrained.*untrained"):
        build_op(spec, _ctx())
    with pytest.raises(ValueError, match=r"teacher\.pretrained"):
        build_op({**spec, "teacher": {"model": "resnet_small", "num_classes": 4, "pretrained": None}}, _ctx())
    with pytest.warns(UserWarning, match="untrained"):
        build_op({**spec, "teacher": {"model": "resnet_small", "num_classes": 4, "pretrained": "untrained"}}, _ctx())
    from keepmix.models import build_model
    torch.manual_seed(3)
    trained = build_model("resnet_small", 4)
    torch.save(trained.state_dict(), tmp_path / "teacher.pt")
    spec = {**spec, "teacher": {"model": "resnet_small", "num_classes": 4, "pretrained": str(tmp_path / "teacher.pt")}}
    op = build_op(spec, _ctx())
    assert torch.equal(op.teacher.classifier.weight, trained.classifier.weight)
    assert not op.teacher.training and not any(p.requires_grad for p in op.teacher.parameters())
    assert op.teacher.classifier.out_features == 4
    with pytest.raises(ValueError, match="unknown key"):
        build_op({**spec, "teacher": {"model": "resnet_small", "weights": "x"}}, _ctx())


# --------------------------------------------------------------------------- pretrained weights


def test_load_pretrained_skips_a_differently_sized_classifier(tmp_path):
    from keepmix.models import build_model
    torch.manual_seed(0)
    source = build_model("resnet_small", 7)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    target = build_model("resnet_small", 3)
    classifier_before = target.classifier.weight.clone()
    skipped = load_pretrained(target, tmp_path / "w.pt")
    assert sorted(skipped) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(target.classifier.weight, classifier_before)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        if not name.startswith("classifier"):
            assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="local state_dict"):
        load_pretrained(target, tmp_path / "missing.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_pretrained(target, tmp_path / "bad.pt")


def test_model_pretrained_in_a_config_loads_the_state_dict_into_the_built_model(tmp_path):
    """``model.pretrained`` (issue 10: fine-tune from a local state_dict): the model a recipe builds holds the
    file's weights everywhere but a classifier of another class count, which stays freshly initialised."""
    from keepmix.models import build_model
    from keepmix.recipes import build_model_from_config
    torch.manual_seed(0)
    source = build_model("resnet_small", 7)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    config = config_from_dict({"model": {"name": "resnet_small", "pretrained": str(tmp_path / "w.pt")}})
    torch.manual_seed(1)
    model = build_model_from_config(config.model, 3)
    torch.manual_seed(1)
    fresh = build_model("resnet_small", 3)
    for (name, a), b, c in zip(source.state_dict().items(), model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(b, c if name.startswith("classifier") else a), name


# --------------------------------------------------------------------------- the shipped recipes

#: classes of each data set the recipes use (to build models and ops without the data)
NUM_CLASSES = {"salient_shapes": 10, "cifar10": 10, "cifar100": 100, "tiny_imagenet": 200, "cub200": 200,
               "cars": 196, "aircraft": 100, "caltech101": 101, "flowers102": 102, "imagenet": 1000,
               "imagefolder": 10, "shards": 1000}


@pytest.mark.slow
def test_every_recipe_parses_and_builds_its_model_and_ops():
    from keepmix.models import build_model
    from keepmix.recipes import build_model_from_config
    from keepmix.data import available_datasets
    names = list_recipes()
    assert len(names) >= 25
    known = {n.replace("-", "_") for n in available_datasets()}
    built, stand_ins = {}, {}
    for name in names:
        config = load_recipe(name)
        arms = expand_arms(config)
        assert config.arms, f"{name} has no arms"
        for arm_name, arm in arms:
            assert arm.data.name in known, (name, arm.data.name)
            k = NUM_CLASSES[arm.data.name]
            if arm.model.name not in built:  # each architecture once (the big ones take a second each)
                built[arm.model.name] = build_model_from_config(arm.model, k)
            if k not in stand_ins:  # ops only keep a reference to the model: a small one of the right K will do
                stand_ins[k] = build_model("resnet_small", k)
            stand_in = stand_ins[k]
            ctx = _ctx(stand_in, num_classes=k, early_head=lambda m=stand_in, k=k: EarlyHead(m, k))
            if "attentive" in arm_name:  # its teacher's weights are the user's to give: refused without them
                with pytest.raises(ValueError, match="pretrained"):
                    build_ops(arm.ops, ctx)
                continue
            ops = build_ops(arm.ops, ctx)
            assert len(ops) == len(arm.ops), (name, arm_name)


def test_default_recipe_compares_cutout_and_keep_cutout_at_one_length():
    config = load_recipe("default")
    arms = dict(expand_arms(config))
    assert list(arms) == ["cutout", "keep_cutout", "keep_cutout_random", "keep_cutout_memory"]
    # the memory arm is the same op reading the saliency memory written by the training backward
    assert {**arms["keep_cutout_memory"].ops[0], "saliency": "model"} == arms["keep_cutout"].ops[0]
    assert arms["keep_cutout_memory"].ops[0]["saliency"] == "memory"
    cut, keep, null = arms["cutout"].ops[0], arms["keep_cutout"].ops[0], arms["keep_cutout_random"].ops[0]
    assert cut["name"] == "cutout" and keep["name"] == "keep_cutout" and keep["saliency"] == "model"
    assert cut["length"] == keep["size"]
    # the null control is the same op on an information-free map, in Cutout's box family
    assert {**null, "saliency": "model"} == keep and null["saliency"] == "random"
    assert keep["clip"] is True and not cut.get("inside", False)
    assert arms["keep_cutout_random"].seed == arms["cutout"].seed
    assert arms["cutout"].seed == arms["keep_cutout"].seed
    assert config.data.name == "salient_shapes"
    assert dataclasses.replace(arms["cutout"], ops=[], name="x") == dataclasses.replace(arms["keep_cutout"], ops=[],
                                                                                         name="x")


@pytest.mark.parametrize("recipe,pairs", [
    ("keepaugment/t1_cutout_resnet18", {"keep_cutout_memory": "keep_cutout"}),
    ("keepaugment/t1_autoaugment_wrn28_10", {"keep_autoaugment_memory": "keep_autoaugment"}),
    ("keepaugment/t2_cutout_length_resnet18", {f"keep_cutout_memory_{n}": f"keep_cutout_{n}"
                                               for n in (8, 12, 16, 20, 24)}),
    ("guidedmixup/t1_cifar100_preact_resnet18", {"guided_ap_memory": "guided_ap"}),
    ("guidedmixup/t1_tiny_imagenet_preact_resnet18", {"guided_ap_memory": "guided_ap"})])
def test_paper_tables_memory_arms_are_their_fresh_arms_reading_the_memory(recipe, pairs, make_tiny_net):
    """Issue 7's memory arms: each is its fresh-saliency arm with ``saliency: memory`` and nothing else changed
    (ops, seed, data, model, schedule), and builds to an op reading the run's memory."""
    from keepmix.memory import MemorySaliency, SaliencyMemory
    from keepmix.recipes import uses_memory
    arms = dict(expand_arms(load_recipe(recipe)))
    model, memory = make_tiny_net(), SaliencyMemory(4, (8, 8))
    for memory_arm, fresh_arm in pairs.items():
        mem, fresh = arms[memory_arm], arms[fresh_arm]
        assert uses_memory(mem.ops) and not uses_memory(fresh.ops), memory_arm
        assert mem.ops[0]["saliency"] == "memory" and fresh.ops[0].get("saliency", "model") == "model"
        assert {k: v for k, v in mem.ops[0].items() if k != "saliency"} == \
            {k: v for k, v in fresh.ops[0].items() if k != "saliency"}, memory_arm
        assert mem.ops[1:] == fresh.ops[1:]
        assert dataclasses.replace(mem, ops=[], name="x") == dataclasses.replace(fresh, ops=[], name="x")
        op = build_op(mem.ops[0], _ctx(model, memory=lambda: memory))
        assert isinstance(op.saliency, MemorySaliency) and op.saliency.memory is memory, memory_arm


def test_paper_recipes_carry_the_papers_settings():
    t1 = dict(expand_arms(load_recipe("keepaugment/t1_cutout_resnet18")))
    c = t1["keep_cutout_low_res"]
    assert (c.optim.epochs, c.optim.schedule, c.optim.lr, c.optim.batch_size) == (300, "cosine", 0.1, 128)
    assert c.ops[0]["scale"] == 0.5 and c.ops[0]["tau"] == 0.6 and c.ops[0]["size"] == 16
    assert t1["keep_cutout_early_loss"].ops[0]["saliency"] == "early_head"
    assert load_recipe("keepaugment/t1_autoaugment_pyramidnet").optim.epochs == 1800
    g = load_recipe("guidedmixup/t1_cifar100_preact_resnet18")
    assert (g.optim.epochs, g.optim.milestones, g.optim.lr, g.optim.batch_size, g.optim.weight_decay) == \
        (1200, [400, 800], 0.1, 100, 1e-4)
    assert g.data.crop_padding == 2
    t = load_recipe("guidedmixup/t1_tiny_imagenet_preact_resnet18")
    assert (t.optim.lr, t.optim.milestones) == (0.2, [600, 900])
    f = load_recipe("guidedmixup/t3_cub_resnet50")
    assert (f.optim.epochs, f.optim.lr, f.optim.milestones, f.optim.batch_size, f.data.image_size) == \
        (300, 0.01, [150, 225], 16, 224)
    assert load_recipe("guidedmixup/t6_scarcity_wrn28_10_20pct").data.fraction == 0.2


def test_guidedmixup_table4_recipe_has_vanilla_and_augmix_with_its_jsd_loss():
    """Table 4 follows PuzzleMix's WRN-28-10 protocol, has a Vanilla arm, and AugMix trains with its
    Jensen–Shannon consistency loss (the "(Aug)" arms feed AugMix images to GuidedMixup)."""
    config = load_recipe("guidedmixup/t4_augmix_cifar100_wrn28_10")
    arms = dict(expand_arms(config))
    assert list(arms) == ["vanilla", "augmix", "guided_sr", "guided_sr_aug", "guided_ap", "guided_ap_aug"]
    assert arms["vanilla"].ops == []
    assert arms["augmix"].jsd_weight == 12.0 and arms["augmix"].ops[0]["name"] == "aug_mix"
    assert all(arms[a].jsd_weight == 0.0 for a in arms if a != "augmix")
    assert [op["name"] for op in arms["guided_ap_aug"].ops] == ["aug_mix", "guided_ap"]
    optim = arms["vanilla"].optim
    assert arms["vanilla"].model.name == "wrn28_10"
    assert (optim.epochs, optim.lr, list(optim.milestones), optim.weight_decay) == (400, 0.2, [200, 300], 1e-4)


def test_manifold_mixup_recipes_mix_at_the_papers_places():
    from keepmix.models import build_model
    for name in ("guidedmixup/t1_cifar100_preact_resnet18", "guidedmixup/t6_scarcity_wrn28_10_10pct"):
        arms = dict(expand_arms(load_recipe(name)))
        spec = arms["manifold_mixup"].ops[0]
        assert spec["layers"] == ["input", "stages.0", "stages.1"]
        model = build_model(arms["manifold_mixup"].model.name, 10) if "preact" in name else build_model("resnet_small", 10)
        op = build_op(spec, _ctx(model, num_classes=10))
        assert op._targets == [None, model.stages[0], model.stages[1]]


def test_set_ops_on_a_recipe_with_arms_is_refused_unless_the_arms_go_too():
    """The reported case: --set 'ops=[{name: keep_cutuot}]' on the default recipe was silently ignored."""
    from keepmix.recipes import apply_overrides, load_recipe
    config = load_recipe("default")
    with pytest.raises(ValueError, match="arms=\\[\\]"):
        apply_overrides(config, ["ops=[{name: cutout, length: 8}]"])
    alone = apply_overrides(config, ["ops=[{name: cutout, length: 8}]", "arms=[]"])
    assert alone.arms == [] and alone.ops == [{"name": "cutout", "length": 8}]


def test_a_recipe_name_typo_gets_a_suggestion():
    from keepmix.recipes import find_recipe
    with pytest.raises(FileNotFoundError, match="did you mean uda_cifar10_subset"):
        find_recipe("uda_cifar10_subst")
