"""models.convert: transformers Dinov2 checkpoints (RAD-DINO, CXformer) become timm models that give
the same features; `weights import/fetch` convert them offline; normalization and size from the configs."""

from __future__ import annotations

import json

import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.models import convert, registry

transformers = pytest.importorskip(
    "transformers", reason="transformers (dev dependency) builds the originals"
)


def _randomize(model, seed=0):
    """Random everything (layer scales, norms and biases too), so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _hf_repo(folder, registers: int, heads: int = 2, mean=0.53, std=0.26):
    """A tiny randomly initialised transformers Dinov2 (or WithRegisters) repository, as on the hub."""
    if registers:
        config = transformers.Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=heads,
            image_size=28,
            patch_size=14,
            num_register_tokens=registers,
            layerscale_value=0.5,
        )
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        config = transformers.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=heads,
            image_size=28,
            patch_size=14,
            layerscale_value=0.5,
        )
        model = transformers.Dinov2Model(config)
    _randomize(model).eval()
    model.save_pretrained(folder)
    transformers.BitImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        do_center_crop=True,
        image_mean=[mean] * 3,
        image_std=[std] * 3,
    ).save_pretrained(folder)
    return model


@pytest.mark.parametrize("init,registers,heads", [("rad-dino", 0, 2), ("cxformer-vits14", 4, 4)])
def test_converted_timm_model_gives_the_same_features(
    tmp_path, offline_weights, cli_runner, torch_one_thread, init, registers, heads
):
    from cxrbench.models.build import create_model

    hf = _hf_repo(tmp_path / "repo", registers, heads)
    result = cli_runner.invoke(app, ["weights", "import", init, str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output + result.stderr
    assert "converted" in result.output
    model, info = create_model(init, 0)  # from the store, normalization and size from the configs
    assert info.image_size == 28 and info.mean == (0.53, 0.53, 0.53) and info.std == (0.26, 0.26, 0.26)
    assert info.model_kwargs["num_heads"] == heads and info.model_kwargs["embed_dim"] == 32
    model.eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.forward_features(x)
        theirs = hf(pixel_values=x).last_hidden_state
        pooled = model(x)
    assert ours.shape == theirs.shape == (2, 1 + registers + 4, 32)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert torch.allclose(pooled, theirs[:, 0], atol=1e-5)  # the CLS feature a classifier head reads
    # a fine-tuning model at another size loads too (position embeddings resampled)
    bigger, _ = create_model(init, 3, image_size=56)
    assert bigger(torch.zeros(1, 3, 56, 56)).shape == (1, 3)


def test_fetch_converts_what_the_hub_cache_holds_without_network(
    tmp_path, offline_weights, cli_runner, torch_one_thread
):
    _hf_repo(tmp_path / "repo", 0)
    offline_weights.put(
        "microsoft/rad-dino",
        {n: tmp_path / "repo" / n for n in ("model.safetensors", "config.json", "preprocessor_config.json")},
    )
    listed = json.loads(cli_runner.invoke(app, ["weights", "list", "rad-dino", "--json"]).output)
    assert listed[0]["present"] == "no"  # the transformers file is not a timm weight file
    assert listed[0]["pretrained_on"] == "mimic,chexpert,nih,padchest,brax"
    result = cli_runner.invoke(app, ["weights", "fetch", "rad-dino"])
    assert result.exit_code == 0, result.output + result.stderr
    listed = json.loads(cli_runner.invoke(app, ["weights", "list", "rad-dino", "--json"]).output)
    assert listed[0]["present"] == "yes" and listed[0]["location"].startswith("imported")
    record = convert.converted_record(registry.get_init("rad-dino"))
    assert record["from"] == "dinov2" and record["image_size"] == 28 and record["mean"] == [0.53] * 3


def test_missing_weights_name_fetch_and_import_of_the_folder(offline_weights):
    from cxrbench.models.build import create_model

    with pytest.raises(InputError, match=r"weights fetch rad-dino.*weights import rad-dino FOLDER"):
        create_model("rad-dino", 2)


def test_bad_sources_are_refused(tmp_path, offline_weights):
    spec = registry.get_init("rad-dino")
    _hf_repo(tmp_path / "repo", 0)
    (tmp_path / "repo" / "preprocessor_config.json").unlink()
    with pytest.raises(InputError, match="preprocessor_config.json is missing"):
        convert.import_converted(spec, tmp_path / "repo")
    with pytest.raises(InputError, match="SwiGLU"):
        convert.timm_kwargs_from_config({"model_type": "dinov2", "use_swiglu_ffn": True}, "config.json")
    with pytest.raises(InputError, match="not a transformers Dinov2"):
        convert.timm_kwargs_from_config({"model_type": "vit"}, "config.json")
    with pytest.raises(InputError, match="cls_token"):
        convert.convert_hf_dinov2({"x": torch.zeros(1)}, {}, "w")


def test_registry_entries_of_the_domain_models():
    for name, repo in (
        ("rad-dino", "microsoft/rad-dino"),
        ("cxformer-vitb14", "m42-health/CXformer-base"),
        ("cxformer-vits14", "m42-health/CXformer-small"),
    ):
        spec = registry.get_init(name)
        assert spec.hf_repo == repo and spec.convert == "hf-dinov2" and "mimic" in spec.pretrained_on
        assert spec.weight_source.key != spec.timm_name  # never shares the store folder of plain DINOv2
    assert registry.get_init("rad-dino").pretraining_list == "training_images.csv"
    assert all(spec.pretrained_on for spec in registry.INITS.values())


def test_fetch_offline_without_a_cached_repository_says_how_to_import_the_folder(offline_weights, cli_runner):
    result = cli_runner.invoke(app, ["weights", "fetch", "cxformer-vitb14"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.stderr
    assert "weights import cxformer-vitb14 FOLDER" in result.stderr
