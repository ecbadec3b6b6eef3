"""The initialization registry and create_model, driven through the real loading path.

Real timm architectures get random weights saved into a fake Hugging Face cache (``offline_weights``),
then load through ``create_model`` exactly as downloaded weights do: offline, with every download
entry point made to fail the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrbench.common.errors import InputError
from cxrbench.models import build, registry, resolve
from cxrbench.models.safeload import save_state_dict


def _build(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


@pytest.fixture(scope="session")
def dinov2_s(tmp_path_factory) -> tuple[dict, Path]:
    """The real vit_small_patch14_dinov2 (22M params) with random weights, saved as safetensors."""
    model = _build("vit_small_patch14_dinov2.lvd142m", num_classes=0)
    path = tmp_path_factory.mktemp("dinov2") / "model.safetensors"
    save_state_dict(model.state_dict(), path)
    return model.state_dict(), path


@pytest.fixture(scope="session")
def test_vit_weights(tmp_path_factory) -> tuple[dict, Path]:
    """timm's tiny test_vit with a 1000-class head, as on its hub repo timm/test_vit.r160_in1k."""
    model = _build("test_vit.r160_in1k", seed=1)
    path = tmp_path_factory.mktemp("test_vit") / "model.safetensors"
    save_state_dict(model.state_dict(), path)
    return model.state_dict(), path


# --------------------------------------------------------------------------- registry


def test_registry_agrees_with_timm():
    from timm.models import get_pretrained_cfg

    assert len(registry.INITS) == 30  # 23 vision-only + 7 vision-language (tests/models/test_vlm.py)
    for spec in registry.INITS.values():
        cfg = get_pretrained_cfg(spec.timm_name)
        if not spec.convert:  # converted repositories (rad-dino, cxformer-*) only share timm's architecture
            assert cfg.hf_hub_id == spec.hf_repo, spec.name
            assert tuple(cfg.mean) == spec.mean and tuple(cfg.std) == spec.std, spec.name
            assert cfg.input_size[-1] == spec.image_size, spec.name
            assert cfg.license == spec.license, spec.name
        assert bool(cfg.fixed_input_size) == spec.fixed_input_size, spec.name
        with torch.device("meta"):  # architecture facts without allocating 1B parameters
            import timm

            model = timm.create_model(spec.timm_name, num_classes=0, **dict(spec.timm_kwargs))
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        assert (patch[0] if patch else None) == spec.patch_size, spec.name
        if spec.family == "dinov3" and spec.patch_size:
            assert model.global_pool == "token"  # CLS pooling as upstream, not timm's default avg


def test_list_inits_covers_every_name_a_user_can_pass():
    from cxrbench.models.resolve import resolve_init

    random = registry.list_inits("random*")
    aliases = [f"random-{a}" for a in registry.RANDOM_ALIASES]
    assert random[: len(aliases)] == aliases  # the docs' random-vit-test first
    assert "random-vit-test" in random and "random-dinov2-vitb14" in random
    assert registry.list_inits("random-vit-*") == ["random-vit-tiny", "random-vit-small", "random-vit-base",
                                                   "random-vit-test"]
    everything = registry.list_inits()
    assert everything[: len(registry.INITS)] == list(registry.INITS) == registry.registered_inits()
    for name in everything:  # every listed name is one --init accepts
        assert resolve_init(name).init == name
    tags = registry.list_inits("timm:vit_base_patch16_224.augreg*")  # asks timm, as timm.list_models does
    assert "timm:vit_base_patch16_224.augreg_in21k" in tags and resolve_init(tags[0]).kind == "timm"
    archs = registry.list_inits("random-vit_base_patch16_22?", timm=True)
    assert archs == ["random-vit_base_patch16_224"] and resolve_init(archs[0]).kind == "random"
    assert registry.list_inits("nothing-like-this*", timm=True) == []


def test_registry_names_and_wildcards():
    assert registry.list_inits("dinov2*") == [n for n in registry.INITS if n.startswith("dinov2")]
    assert len(registry.list_inits("dinov2*")) == 8 and registry.list_inits("*-reg")[0] == "dinov2-vits14-reg"
    assert registry.get_init("imagenet21k-vitb16").timm_name == "vit_base_patch16_224.augreg_in21k"
    assert registry.get_init("imagenet21k-vitb16").mean == (0.5, 0.5, 0.5)
    assert registry.get_init("DINOv2-ViTB14").timm_name == "vit_base_patch14_dinov2.lvd142m"
    assert registry.get_init("dinov3-convnext-b").timm_name == "convnext_base.dinov3_lvd1689m"
    assert registry.get_init("dinov2-vitg14-reg").timm_name == "vit_giant_patch14_reg4_dinov2.lvd142m"
    assert registry.get_init("dinov3-vit7b16").timm_name == "vit_7b_patch16_dinov3.lvd1689m"
    assert registry.get_init("dinov3-vith16plus").timm_name == "vit_huge_plus_patch16_dinov3.lvd1689m"
    assert registry.get_init("dinov3-vits16plus").architecture == "ViT-S+/16"
    assert registry.get_init("dinov3-convnext-l").timm_name == "convnext_large.dinov3_lvd1689m"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dinov2-vitb16", ["dinov2-vitb14", "dinov3-vitb16"]),
        ("dinov2", ["ambiguous", "dinov2-vits14", "dinov2-vitg14-reg"]),
        ("vit_base_patch16_224", ["timm:vit_base_patch16_224", "random-vit_base_patch16_224"]),
        ("foo:bar", ["unknown prefix", "checkpoint:"]),
        ("timm:vit_base_patch16_224.nope", ["augreg_in21k"]),
        ("timm:vit_bse_patch16_224", ["vit_base_patch16_224"]),
        ("random-vit_bse_patch16_224", ["vit_base_patch16_224"]),
    ],
)
def test_unknown_or_ambiguous_names_name_the_closest(name, expected):
    with pytest.raises(InputError) as err:
        resolve.resolve_init(name)
    message = err.value.one_line()
    for text in expected:
        assert text in message
    if name in ("dinov2-vitb16", "dinov2", "foo:bar"):
        assert "timm:" in message and "checkpoint:" in message and "random-" in message


# --------------------------------------------------------------------------- registered inits, HF cache


def test_dinov2_loads_offline_from_the_hf_cache(offline_weights, dinov2_s):
    from timm.layers import resample_abs_pos_embed

    source, path = dinov2_s
    offline_weights.put("timm/vit_small_patch14_dinov2.lvd142m", {"model.safetensors": path})
    rng_before = torch.get_rng_state()
    model, info = build.create_model("dinov2-vits14", 3, image_size=224)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is not touched

    state = model.state_dict()
    for key, value in source.items():
        if key != "pos_embed":
            assert torch.equal(state[key], value), key
    # 518 px pretrained grid (37x37) resampled by timm's filter to 224 px (16x16).
    expected = resample_abs_pos_embed(source["pos_embed"], (16, 16), num_prefix_tokens=1)
    assert state["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    assert torch.allclose(state["pos_embed"], expected)
    assert state["head.weight"].shape == (3, 384) and torch.count_nonzero(state["head.bias"]) == 0
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert (info.arch, info.image_size, info.patch_size, info.num_classes) == (
        "vit_small_patch14_dinov2.lvd142m",
        224,
        14,
        3,
    )
    assert (
        info.pretrained and info.weights_origin == "hf-cache" and info.weights.endswith("model.safetensors")
    )
    assert json.loads(json.dumps(info.to_dict()))["arch"] == info.arch
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)

    native, native_info = build.create_model("dinov2-vits14", 3)
    assert native_info.image_size == 518 and torch.equal(
        native.state_dict()["pos_embed"], source["pos_embed"]
    )


def test_image_size_must_be_a_multiple_of_the_patch(offline_weights):
    with pytest.raises(InputError, match=r"not a multiple of the patch size 14.*use 504 or 518"):
        build.create_model("dinov2-vitb14", 3, image_size=512)


def test_missing_weights_say_what_is_missing_and_how_to_get_it(offline_weights):
    with pytest.raises(InputError) as err:
        build.create_model("dinov2-vitb14-reg", 3, image_size=224)
    message = err.value.one_line()
    assert "timm/vit_base_patch14_reg4_dinov2.lvd142m" in message and "model.safetensors" in message
    assert str(offline_weights.cache) in message
    assert "cxrbench weights fetch dinov2-vitb14-reg" in message
    assert "cxrbench weights import dinov2-vitb14-reg FILE" in message


def test_weights_that_do_not_fit_are_refused_not_half_loaded(offline_weights, test_vit_weights):
    _, path = test_vit_weights  # a 64-d test_vit where a 384-d DINOv2 ViT-S/14 is expected
    offline_weights.put("timm/vit_small_patch14_dinov2.lvd142m", {"model.safetensors": path})
    with pytest.raises(InputError, match="do not fit"):
        build.create_model("dinov2-vits14", 2, image_size=224)


def test_dinov3_vit_uses_cls_pooling_and_loads_every_weight(offline_weights):
    source = _build("vit_small_patch16_dinov3.lvd1689m", num_classes=0, global_pool="token").state_dict()
    path = offline_weights.cache.parent / "dinov3.safetensors"
    save_state_dict(source, path)
    offline_weights.put("timm/vit_small_patch16_dinov3.lvd1689m", {"model.safetensors": path})
    model, info = build.create_model("dinov3-vits16", 4, image_size=224)
    assert model.global_pool == "token" and info.model_kwargs == {"global_pool": "token"}
    assert info.image_size == 224 and info.patch_size == 16 and info.license == "dinov3-license"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items())
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 4)


def test_augreg_custom_load_cfg_still_loads_the_hub_safetensors(offline_weights):
    # augreg cfgs have custom_load=True (original JAX .npz): a local safetensors copy must still load.
    source = _build("vit_tiny_patch16_224.augreg_in21k").state_dict()
    assert source["head.weight"].shape[0] == 21843
    path = offline_weights.cache.parent / "augreg.safetensors"
    save_state_dict(source, path)
    offline_weights.put("timm/vit_tiny_patch16_224.augreg_in21k", {"model.safetensors": path})
    model, info = build.create_model("timm:vit_tiny_patch16_224.augreg_in21k", 5, image_size=384)
    assert info.mean == (0.5, 0.5, 0.5) and info.family == "timm"
    state = model.state_dict()
    assert state["head.weight"].shape == (5, 192)  # the 21k head is dropped, a new one made
    assert torch.equal(state["blocks.11.mlp.fc2.weight"], source["blocks.11.mlp.fc2.weight"])
    assert state["pos_embed"].shape == (1, 1 + 24 * 24, 192)


@pytest.mark.slow
def test_imagenet21k_vitb16_the_study_arm(offline_weights):
    source = _build("vit_base_patch16_224.augreg_in21k").state_dict()
    path = offline_weights.cache.parent / "b16.safetensors"
    save_state_dict(source, path)
    offline_weights.put("timm/vit_base_patch16_224.augreg_in21k", {"model.safetensors": path})
    model, info = build.create_model("imagenet21k-vitb16", 14, image_size=224)
    assert info.mean == (0.5, 0.5, 0.5) and info.patch_size == 16
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("head."))
    assert state["head.weight"].shape == (14, 768)


@pytest.mark.slow
def test_dinov3_convnext_any_resolution(offline_weights):
    source = _build("convnext_tiny.dinov3_lvd1689m", num_classes=0).state_dict()
    path = offline_weights.cache.parent / "cnx.safetensors"
    save_state_dict(source, path)
    offline_weights.put("timm/convnext_tiny.dinov3_lvd1689m", {"model.safetensors": path})
    model, info = build.create_model("dinov3-convnext-t", 3, image_size=320)
    assert info.patch_size is None and info.image_size == 320
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    assert model.head.fc.weight.shape == (3, 768)
    assert model(torch.zeros(1, 3, 320, 320)).shape == (1, 3)


# --------------------------------------------------------------------------- random, timm:, hf-hub:


def test_random_arm_needs_no_weights_and_follows_the_seed(offline_weights):
    a, info = build.create_model("random-vit-test", 2, image_size=64, seed=3)
    b, _ = build.create_model("random-vit-test", 2, image_size=64, seed=3)
    c, _ = build.create_model("random-vit-test", 2, image_size=64, seed=4)
    assert not info.pretrained and info.weights is None and info.family == "random"
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(
        a.state_dict()["blocks.0.attn.qkv.weight"], c.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert a(torch.zeros(2, 3, 64, 64)).shape == (2, 2)

    same_arch, dinfo = build.create_model("random-dinov2-vits14", 2, image_size=224)
    assert dinfo.arch == "vit_small_patch14_dinov2.lvd142m" and dinfo.mean == (0.485, 0.456, 0.406)
    assert not dinfo.pretrained and dinfo.patch_size == 14
    _, tinfo = build.create_model("random-resnet18", 2, image_size=96)
    assert tinfo.patch_size is None and tinfo.image_size == 96


def test_timm_passthrough_uses_the_tags_normalization(offline_weights, test_vit_weights):
    source, path = test_vit_weights
    offline_weights.put("timm/test_vit.r160_in1k", {"model.safetensors": path})
    model, info = build.create_model("timm:test_vit", 3, image_size=96, drop_path_rate=0.1)
    assert info.arch == "test_vit.r160_in1k" and info.mean == (0.5, 0.5, 0.5)
    assert info.model_kwargs == {"drop_path_rate": 0.1}
    state = model.state_dict()
    assert torch.equal(state["blocks.5.mlp.fc1.weight"], source["blocks.5.mlp.fc1.weight"])
    assert state["head.weight"].shape == (3, 64)
    again, _ = build.create_model("timm:test_vit", 3, image_size=96, drop_path_rate=0.1)
    other, _ = build.create_model("timm:test_vit", 3, image_size=96, seed=1)
    assert torch.equal(again.head.weight, model.head.weight)  # the new head is drawn from the seed
    assert not torch.equal(other.head.weight, model.head.weight)
    with pytest.raises(InputError, match="set by cxrbench"):
        build.create_model("timm:test_vit", 3, img_size=96)


def test_hf_hub_passthrough_reads_config_and_weights_from_the_cache(offline_weights, test_vit_weights):
    source, path = test_vit_weights
    config = {
        "architecture": "test_vit",
        "num_classes": 1000,
        "pretrained_cfg": {
            "tag": "r160_in1k",
            "input_size": [3, 160, 160],
            "mean": [0.1, 0.2, 0.3],
            "std": [0.4, 0.5, 0.6],
            "fixed_input_size": True,
            "classifier": "head",
        },
    }
    with pytest.raises(InputError, match="config.json"):
        build.create_model("hf-hub:someone/tiny-vit", 2)
    offline_weights.put(
        "someone/tiny-vit", {"config.json": json.dumps(config).encode(), "model.safetensors": path}
    )
    model, info = build.create_model("hf-hub:someone/tiny-vit", 2)
    assert info.mean == (0.1, 0.2, 0.3) and info.image_size == 160 and info.weights_origin == "hf-cache"
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], source["blocks.0.attn.qkv.weight"])


# --------------------------------------------------------------------------- checkpoint:


def _cxrbench_run(tmp_path: Path, findings: list[str], prefix: str = "") -> tuple[torch.nn.Module, Path]:
    """A run folder as cxrbench train leaves it: best.safetensors + best.json."""
    model, info = build.create_model("random-vit-test", len(findings), image_size=64, seed=7)
    run = tmp_path / "run_a"
    save_state_dict({prefix + k: v for k, v in model.state_dict().items()}, run / "best.safetensors")
    meta = {
        "findings": findings,
        "image_size": 64,
        "mean": [0.3, 0.3, 0.3],
        "std": [0.2, 0.2, 0.2],
        "init": info.init,
        "arch": info.arch,
        "model_kwargs": info.model_kwargs,
    }
    (run / "best.json").write_text(json.dumps(meta))
    return model.eval(), run


def test_checkpoint_reinitializes_the_head_or_keeps_shared_rows(offline_weights, tmp_path):
    source, run = _cxrbench_run(tmp_path, ["atelectasis", "edema", "pneumothorax"])
    src = source.state_dict()
    init = f"checkpoint:{run / 'best.safetensors'}"

    fresh, info = build.create_model(init, 2)
    assert (
        info.mean == (0.3, 0.3, 0.3) and info.image_size == 64 and info.source["findings"][0] == "atelectasis"
    )
    assert info.head_rows_kept == () and info.weights_origin == "checkpoint"
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in src.items() if not k.startswith("head."))
    assert not any(torch.equal(state["head.weight"][0], row) for row in src["head.weight"])

    kept, info = build.create_model(init, 2, keep_head_for=["pneumothorax", "hernia"])
    assert info.head_rows_kept == ("pneumothorax",)
    assert torch.equal(kept.head.weight[0], src["head.weight"][2]) and torch.equal(
        kept.head.bias[0], src["head.bias"][2]
    )
    assert not any(torch.equal(kept.head.weight[1], row) for row in src["head.weight"])

    # Keeping every row rebuilds the trained model exactly (folder form of the init, new resolution too).
    same, _ = build.create_model(
        f"checkpoint:{run}", 3, keep_head_for=["atelectasis", "edema", "pneumothorax"]
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(same.eval()(x), source(x), atol=1e-6)
    bigger, binfo = build.create_model(init, 3, image_size=96)
    assert binfo.image_size == 96 and bigger(torch.zeros(1, 3, 96, 96)).shape == (1, 3)


def test_checkpoint_with_ddp_or_compile_prefixes_loads(offline_weights, tmp_path):
    source, run = _cxrbench_run(tmp_path, ["edema"], prefix="module._orig_mod.")
    model, _ = build.create_model(f"checkpoint:{run / 'best.safetensors'}", 1, keep_head_for=["edema"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_checkpoint_timm_folder_with_a_pytorch_file(offline_weights, tmp_path, test_vit_weights):
    source, _ = test_vit_weights
    folder = tmp_path / "exported"
    folder.mkdir()
    torch.save({"state_dict": source, "epoch": 3}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 1000}))
    model, info = build.create_model(f"checkpoint:{folder}", 2, image_size=64)
    assert torch.equal(model.state_dict()["blocks.2.norm1.weight"], source["blocks.2.norm1.weight"])
    assert info.mean == (0.5, 0.5, 0.5)


def test_checkpoint_errors(offline_weights, tmp_path, test_vit_weights):
    _, path = test_vit_weights
    with pytest.raises(InputError, match="not found"):
        build.create_model(f"checkpoint:{tmp_path / 'nope.safetensors'}", 2)
    with pytest.raises(InputError, match="cannot tell the architecture"):
        build.create_model(f"checkpoint:{path}", 2)
    _, run = _cxrbench_run(tmp_path, ["edema", "hernia"])
    with pytest.raises(InputError, match="2 distinct findings"):
        build.create_model(f"checkpoint:{run}", 2, keep_head_for=["edema"])
    with pytest.raises(InputError, match="checkpoint whose json lists its findings"):
        build.create_model("random-vit-test", 1, keep_head_for=["edema"])
    meta = json.loads((run / "best.json").read_text())
    (run / "best.json").write_text(json.dumps({**meta, "arch": "vit_small_patch16_224"}))
    with pytest.raises(InputError, match="do not fit"):
        build.create_model(f"checkpoint:{run}", 2, image_size=64)
