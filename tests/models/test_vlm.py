"""Vision-language inits (models/vlm*.py): open_clip and transformers SigLIP image towers become timm
backbones with the library's own features, their text towers encode prompts as the library does, and
weights come only from disk (import, fetch from the hub cache, local folders, tiny models from a seed)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.models import convert, registry
from cxrbench.models.build import create_model
from cxrbench.models.vlm import load_vision_language
from cxrbench.models.vlm_tiny import build_tiny, save_tiny

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch (dev dependency, extra vlm)")
transformers = pytest.importorskip("transformers", reason="transformers (dev dependency, extra vlm)")

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["pleural effusion", "no pleural effusion", "a chest x-ray showing cardiomegaly"]


def _biomedclip_like(folder, seed=0):
    """A tiny open_clip model shaped like BiomedCLIP (timm ViT trunk, linear projection, transformers BERT
    text tower, BERT tokenizer), written as its hub repository is: open_clip_config.json, weights,
    tokenizer files, and the text model's config under hf_text/."""
    folder.mkdir(parents=True)
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "no",
        "pleural",
        "effusion",
        "a",
        "chest",
        "x",
        "-",
        "ray",
        "showing",
        "cardiomegaly",
    ]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    hf_text = folder / "hf_text"
    transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    ).save_pretrained(str(hf_text))
    cfg = {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 160,
            },
            "text_cfg": {
                "hf_model_name": "org/tiny-bert",
                "hf_tokenizer_name": "org/tiny-bert",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 16,
            },
        },
        "preprocess_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    build = json.loads(json.dumps(cfg["model_cfg"]))
    build["text_cfg"].update(hf_model_name=str(hf_text), hf_model_pretrained=False)
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**build)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), tokenizer


def _open_clip_siglip_like(folder, seed=0):
    """A tiny open_clip SigLIP-style model (timm trunk with attention pooling and no projection, as
    open_clip publishes SigLIP: ``timm_pool: map``, ``timm_proj: none``), written as its hub repository is."""
    folder.mkdir(parents=True)
    cfg = {
        "model_cfg": {
            "embed_dim": 64,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
                "image_size": 160,
            },
            "text_cfg": {
                "context_length": 16,
                "vocab_size": 49408,
                "width": 64,
                "heads": 2,
                "layers": 1,
                "pool_type": "last",
                "no_causal_mask": True,
                "proj_bias": True,
            },
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    build = {k: v for k, v in cfg["model_cfg"].items() if k != "custom_text"}
    model = open_clip.CustomTextCLIP(**json.loads(json.dumps(build)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    return model.eval(), open_clip.get_tokenizer(f"local-dir:{folder}")


def _library(kind, tmp_path):
    """(folder, library model, tokenizer, input size) of one family, written as its library does."""
    folder = tmp_path / kind
    if kind == "biomedclip-like":
        model, tok = _biomedclip_like(folder)
        return folder, model, tok, 160
    if kind == "open-clip-siglip-like":
        model, tok = _open_clip_siglip_like(folder)
        return folder, model, tok, 160
    tiny = save_tiny(kind, folder, seed=3)
    return folder, tiny.model, tiny.tokenizer, 32


def _reference(kind, model, tok, x):
    """The library's own (normalized) image and text embeddings, and its pooled/last features."""
    with torch.no_grad():
        if kind == "siglip-test":
            out = model.vision_model(pixel_values=x)
            ids = tok(PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")[
                "input_ids"
            ]
            text = F.normalize(model.text_model(input_ids=ids).pooler_output, dim=-1)
            return F.normalize(out.pooler_output, dim=-1), text, out.last_hidden_state
        return model.encode_image(x, normalize=True), model.encode_text(tok(PROMPTS), normalize=True), None


FAMILIES = ["clip-test", "biomedclip-like", "siglip-test"]
PARITY = [*FAMILIES, "open-clip-siglip-like"]
REGISTERED = {
    "clip-test": "clip-vitb16",
    "biomedclip-like": "biomedclip-vitb16",
    "siglip-test": "siglip-vitb16",
}


@pytest.mark.parametrize("kind", PARITY)
def test_image_tower_features_equal_the_library_forward(tmp_path, offline_weights, kind):
    folder, lib, tok, size = _library(kind, tmp_path)
    model, info = create_model(f"local-dir:{folder}", 3)  # converted to timm in memory, a new head
    vl = load_vision_language(f"local-dir:{folder}")
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    img_ref, text_ref, tokens_ref = _reference(kind, lib, tok, x)
    with torch.no_grad():
        img = vl.image_embeddings(model, x)
        assert model(x).shape == (2, 3)
    assert img.shape == img_ref.shape and (img - img_ref).abs().max() < 1e-5, (img - img_ref).abs().max()
    text = vl.encode_text(PROMPTS)
    assert torch.allclose(text, text_ref, atol=1e-6) and torch.allclose(text.norm(dim=1), torch.ones(3))
    if tokens_ref is not None:  # every token, not only the pooled one
        with torch.no_grad():
            assert (model.forward_features(x) - tokens_ref).abs().max() < 1e-5
    assert info.image_size == size and info.weights_origin == "local-dir" and vl.embed_dim == img.shape[1]
    if kind == "biomedclip-like":
        assert info.mean == (0.4, 0.4, 0.4) and info.arch == "test_vit" and vl.logit_bias is None
    if kind == "siglip-test":
        assert vl.logit_bias == pytest.approx(-10.0) and vl.logit_scale == pytest.approx(10.0)
        assert vl.projection is None and info.model_kwargs["global_pool"] == "map"
    if kind == "open-clip-siglip-like":
        assert vl.projection is None and info.model_kwargs == {"global_pool": "map"} and vl.logit_bias
    # the library's logits come out of the recorded scale and bias
    logits = vl.logits(img, text)
    assert logits.shape == (2, 3) and torch.allclose(
        logits, img @ text.T * vl.logit_scale + (vl.logit_bias or 0)
    )


@pytest.mark.parametrize("kind", FAMILIES)
def test_import_converts_both_towers_into_the_store(tmp_path, offline_weights, cli_runner, kind):
    folder, lib, tok, size = _library(kind, tmp_path)
    init = REGISTERED[kind]
    result = cli_runner.invoke(app, ["weights", "import", init, str(folder)])
    assert result.exit_code == 0, result.output + result.stderr
    listed = json.loads(cli_runner.invoke(app, ["weights", "list", init, "--json"]).output)
    assert listed[0]["present"] == "yes" and listed[0]["location"].startswith("imported")
    folder_copy = tmp_path / "gone"
    folder.rename(folder_copy)  # the store holds everything: the source folder may go away
    model, info = create_model(init, 2)
    vl = load_vision_language(init)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    img_ref, text_ref, _ = _reference(kind, lib, tok, x)
    with torch.no_grad():
        assert (vl.image_embeddings(model, x) - img_ref).abs().max() < 1e-5
    assert torch.allclose(vl.encode_text(PROMPTS), text_ref, atol=1e-6)
    assert info.weights_origin == "imported" and info.image_size == size and info.license
    record = convert.converted_record(registry.get_init(init))
    assert (
        record["from"] == registry.get_init(init).convert and record["vlm"]["embed_dim"] == img_ref.shape[1]
    )
    assert record["vlm"]["logit_scale"] == pytest.approx(vl.logit_scale)
    again = cli_runner.invoke(app, ["weights", "import", init, str(folder_copy)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert cli_runner.invoke(app, ["weights", "import", init, str(folder_copy), "--force"]).exit_code == 0


def test_tiny_inits_are_drawn_from_the_seed_and_match_their_text_tower(offline_weights):
    a, info = create_model("random-clip-test", 4, seed=1)
    b, _ = create_model("random-clip-test", 4, seed=1)
    c, _ = create_model("random-clip-test", 4, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    assert (
        info.family == "random" and not info.pretrained and info.image_size == 32 and a.head.out_features == 4
    )
    assert info.model_kwargs["act_layer"] == "quick_gelu"
    for init, seed in (("random-clip-test", 1), ("random-siglip-test", 7)):
        model, _ = create_model(init, 2, seed=seed)
        tiny, vl = build_tiny(init[len("random-") :], seed), load_vision_language(init, seed=seed)
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        ref, text_ref, _ = _reference(init[len("random-") :], tiny.model, tiny.tokenizer, x)
        with torch.no_grad():
            assert (vl.image_embeddings(model.eval(), x) - ref).abs().max() < 1e-5
        assert torch.equal(vl.encode_text(PROMPTS), text_ref)
        assert vl.describe()["source"].endswith(f"(seed {seed})")


@pytest.mark.parametrize("init", ["random-clip-test", "random-siglip-test"])
def test_lora_finds_the_projections_and_merges_into_plain_timm(offline_weights, init):
    pytest.importorskip("peft")
    import timm

    from cxrbench.train.methods.lora import LoraSpec, apply_lora, merged_state_dict

    model, info = create_model(init, 2, seed=0)
    lora = apply_lora(model, LoraSpec(rank=2), seed=0)
    assert {"qkv", "proj", "fc1", "fc2"} <= set(lora.targets)
    assert "blocks.0.attn.qkv" in lora.modules and not any(m.startswith("head") for m in lora.modules)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    plain = timm.create_model(info.arch, num_classes=2, img_size=info.image_size, **info.model_kwargs)
    plain.load_state_dict(merged_state_dict(model), strict=True)  # what best.safetensors reloads into
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), expected, atol=1e-5)


def _train(cache, out, init, adaptation):
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    cfg = TrainConfig(
        cache=str(cache),
        init=init,
        out=str(out),
        epochs=1,
        batch_size=8,
        lr=1e-3,
        workers=0,
        log_every=1,
        seed=0,
        adaptation=adaptation,
        **({"knn_k": (3,)} if adaptation == "knn" else {}),
    )
    return train(cfg)


TRAIN_CASES = [
    ("random-siglip-test", "lora"),
    ("random-clip-test", "linear"),
    pytest.param("random-clip-test", "full", marks=pytest.mark.slow),
    pytest.param("random-clip-test", "knn", marks=pytest.mark.slow),
    pytest.param("random-siglip-test", "full", marks=pytest.mark.slow),
    pytest.param("random-siglip-test", "linear", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("init,adaptation", TRAIN_CASES)
def test_every_adaptation_trains_a_vlm_tower(tmp_path, offline_weights, tiny_cache_factory, init, adaptation):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    _train(cache, tmp_path / "run", init, adaptation)
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["init"] == init and meta["arch"] in (
        "vit_base_patch16_clip_224",
        "vit_base_patch16_siglip_224",
    )
    again, _ = create_model(f"checkpoint:{tmp_path / 'run' / 'best.safetensors'}", 2)  # plain timm reload
    assert again(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_fetch_downloads_repository_tokenizer_and_text_model_then_converts(
    tmp_path, offline_weights, monkeypatch
):
    """The network boundary: huggingface_hub is asked for the init's files, the tokenizer files and the
    transformers text model's config; the fake hub serves them from a local copy."""
    import huggingface_hub

    folder, lib, tok, size = _library("biomedclip-like", tmp_path)
    spec = registry.get_init("biomedclip-vitb16")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    repos = {spec.hf_repo: folder, "org/tiny-bert": folder / "hf_text"}

    def hf_hub_download(repo, filename, **kw):
        calls.append((repo, filename))
        snap = offline_weights.put(repo, {filename: repos[repo] / filename})
        return str(snap / filename)

    def snapshot_download(repo, allow_patterns=(), **kw):
        calls.append((repo, "*"))
        have = {n: repos[repo] / n for n in allow_patterns if (repos[repo] / n).is_file()}
        return str(offline_weights.put(repo, have)) if have else str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    convert.fetch_converted(spec)
    assert (spec.hf_repo, "open_clip_config.json") in calls and (
        spec.hf_repo,
        "open_clip_model.safetensors",
    ) in calls
    assert ("org/tiny-bert", "*") in calls  # the text model's config
    model, info = create_model("biomedclip-vitb16", 2)
    vl = load_vision_language("biomedclip-vitb16")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert (vl.image_embeddings(model.eval(), x) - _reference("x", lib, tok, x)[0]).abs().max() < 1e-5


def test_offline_missing_and_wrong_inits_fail_with_one_line(tmp_path, offline_weights, cli_runner):
    result = cli_runner.invoke(app, ["weights", "fetch", "medsiglip-448"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.stderr
    assert "weights import medsiglip-448 FOLDER" in result.stderr
    with pytest.raises(InputError, match=r"weights fetch medsiglip-448.*weights import medsiglip-448 FOLDER"):
        create_model("medsiglip-448", 2)
    with pytest.raises(InputError, match="weights fetch clip-vitb16"):
        load_vision_language("clip-vitb16")
    with pytest.raises(InputError, match="not a vision-language model"):
        load_vision_language("random-vit-test")
    save_tiny("clip-test", tmp_path / "clip")
    with pytest.raises(InputError, match="is a hf-siglip model but the folder holds a open-clip one"):
        convert.import_converted(registry.get_init("siglip-vitb16"), tmp_path / "clip")
    save_tiny("siglip-test", tmp_path / "sig")
    (tmp_path / "sig" / "tokenizer.json").unlink()
    (tmp_path / "sig" / "tokenizer_config.json").unlink()
    with pytest.raises(InputError, match="no tokenizer files"):
        convert.import_converted(registry.get_init("siglip-vitb16"), tmp_path / "sig")
    assert not (
        tmp_path
        / "cxrbench-home"
        / "weights"
        / registry.get_init("siglip-vitb16").weight_source.key
        / "model.safetensors"
    ).exists()


def test_architectures_without_an_exact_timm_equivalent_are_refused():
    from cxrbench.models import vlm_convert as vc

    with pytest.raises(InputError, match="NaFlex"):
        vc.siglip_plan({"model_type": "siglip2"}, None, "config.json")
    with pytest.raises(InputError, match="ResNet image tower"):
        vc.open_clip_plan({"model_cfg": {"vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}}}, "cfg")
    with pytest.raises(InputError, match="attentional_pool"):
        vc.open_clip_plan({"model_cfg": {"vision_cfg": {"attentional_pool": True}}}, "cfg")
    with pytest.raises(InputError, match="projection 'mlp'"):
        vc.open_clip_plan(
            {"model_cfg": {"vision_cfg": {"timm_model_name": "test_vit", "timm_proj": "mlp"}}}, "c"
        )
    with pytest.raises(InputError, match="activation"):
        vc.siglip_plan({"model_type": "siglip", "vision_config": {"hidden_act": "relu"}}, None, "config.json")
    plan = vc.siglip_plan(
        {
            "model_type": "siglip",
            "vision_config": {
                "hidden_size": 1152,
                "intermediate_size": 4304,
                "patch_size": 14,
                "image_size": 448,
            },
        },
        None,
        "c",
    )
    assert int(1152 * plan.kwargs["mlp_ratio"]) == 4304 and plan.image_size == 448  # So400m's odd MLP width


def test_missing_extra_is_one_line_naming_it(monkeypatch, offline_weights):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(InputError, match=r"open_clip_torch.*cxrbench\[vlm\]"):
        create_model("random-clip-test", 2)


def test_registry_records_sources_licences_and_pretraining_data():
    from cxrbench.models.contamination import contamination_warnings, pretraining_datasets
    from cxrbench.models.vlm_convert import VLM_FORMATS

    vlms = {n: s for n, s in registry.INITS.items() if s.convert in VLM_FORMATS}
    assert {"clip-vitb16", "biomedclip-vitb16", "siglip-vitb16", "siglip2-vitb16", "medsiglip-448"} <= set(
        vlms
    )
    for spec in vlms.values():
        assert (
            spec.license and spec.pretrained_on and spec.hf_repo and spec.weight_source.key != spec.timm_name
        )
    assert {"mimic", "chexpert"} <= set(pretraining_datasets("medsiglip-448"))
    assert contamination_warnings("medsiglip-448", ["mimic", "nih"])[0].startswith(
        "init medsiglip-448 was pretrained on mimic"
    )
    assert not contamination_warnings("biomedclip-vitb16", ["mimic"])
    assert pretraining_datasets("random-clip-test") == ()
