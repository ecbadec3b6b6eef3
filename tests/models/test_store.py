"""Weight cache, safe loading, and the `cxrbench weights list|fetch|import` commands (no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_sha256
from cxrbench.models import build, registry, resolve, safeload, store


def _build(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


@pytest.fixture(scope="session")
def test_vit_state() -> dict:
    """timm's tiny test_vit (the architecture of hub repo timm/test_vit.r160_in1k), random weights."""
    return _build("test_vit.r160_in1k", seed=2).state_dict()


class _Marker:
    """A pickled object whose unpickling would create a file: proof that no code runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _ok(result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


def _refused(result, *texts: str) -> str:
    message = result.output + (result.stderr if hasattr(result, "stderr") else "")
    assert result.exit_code == 2, message
    assert "Traceback" not in message
    for text in texts:
        assert text in message, message
    return message


# --------------------------------------------------------------------------- locations


def test_cache_locations_follow_the_environment(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "CXRBENCH_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.hf_hub_cache() == tmp_path / ".cache" / "huggingface" / "hub"
    assert store.cxrbench_home() == tmp_path / ".cache" / "cxrbench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert store.hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert store.hf_hub_cache() == tmp_path / "hub"
    monkeypatch.setenv("CXRBENCH_HOME", str(tmp_path / "cx"))
    assert (
        store.imported_dir("vit_small_patch14_dinov2.lvd142m")
        == tmp_path / "cx" / "weights" / "vit_small_patch14_dinov2.lvd142m"
    )
    with pytest.raises(InputError):
        store.imported_dir("../escape")


# --------------------------------------------------------------------------- safe loading


def test_every_pytorch_format_loads_as_plain_tensors(tmp_path, test_vit_state):
    sd = {k: v for k, v in list(test_vit_state.items())[:6]}
    safeload.save_state_dict(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "b.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "c.pt")
    torch.save(sd, tmp_path / "d.bin", _use_new_zipfile_serialization=False)
    expected = {
        "a.safetensors": "safetensors",
        "b.pth": "torch-zip",
        "c.pt": "torch-zip",
        "d.bin": "torch-legacy",
    }
    for name, fmt in expected.items():
        assert safeload.detect_format(tmp_path / name) == fmt
        loaded = safeload.load_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(sd), name
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name


def test_a_pickle_needing_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"head.weight": torch.zeros(2, 2), "extra": _Marker(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError) as err:
        safeload.load_state_dict(tmp_path / "evil.pth")
    message = err.value.one_line()
    assert "arbitrary code" in message and "weights_only=True" in message and "it references '" in message
    assert "state_dict()" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"not a weight file at all", "not a weight file"),
        (None, "NumPy/JAX"),
        ({"weights": torch.zeros(1), "epoch": 4}, "not tensors"),
        (b"\x80\x02garbage", "damaged"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, text):
    path = tmp_path / "weights.bin"
    if content is None:
        np.savez(path.with_suffix(".npz"), w=np.zeros(3))
        path = path.with_suffix(".npz")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=text) as err:
        safeload.load_state_dict(path)
    assert str(path) in err.value.one_line()


def test_as_safetensors_converts_into_a_temporary_file(tmp_path, test_vit_state):
    torch.save({"state_dict": test_vit_state}, tmp_path / "x.pth")
    with safeload.as_safetensors(tmp_path / "x.pth") as st:
        assert safeload.detect_format(st) == "safetensors" and st.parent != tmp_path
        assert safeload.tensor_shapes(st)["head.weight"] == (1000, 64)
    assert not st.exists()
    safeload.save_state_dict(test_vit_state, tmp_path / "y.safetensors")
    with safeload.as_safetensors(tmp_path / "y.safetensors") as st:
        assert st == tmp_path / "y.safetensors"  # clean safetensors are used in place


# --------------------------------------------------------------------------- import


def test_import_pth_then_train_offline_from_it(offline_weights, cli_runner, tmp_path, test_vit_state):
    torch.save({"state_dict_ema": test_vit_state}, tmp_path / "copied.pth")
    result = cli_runner.invoke(
        app, ["weights", "import", "timm:test_vit.r160_in1k", str(tmp_path / "copied.pth")]
    )
    _ok(result)
    dest = store.cxrbench_home() / "weights" / "test_vit.r160_in1k"
    assert "converted to safetensors" in result.output and str(dest / "model.safetensors") in result.output
    record = json.loads((dest / "weights.json").read_text())
    assert record["source_format"] == "torch-zip" and record["converted_to_safetensors"]
    assert record["source_sha256"] == file_sha256(tmp_path / "copied.pth")

    model, info = build.create_model("timm:test_vit.r160_in1k", 2, image_size=64)
    assert info.weights_origin == "imported" and info.weights == str(dest / "model.safetensors")
    assert torch.equal(
        model.state_dict()["blocks.3.attn.proj.weight"], test_vit_state["blocks.3.attn.proj.weight"]
    )

    again = cli_runner.invoke(app, ["weights", "import", "timm:test_vit", str(tmp_path / "copied.pth")])
    _refused(again, "already imported", "--force")
    _ok(
        cli_runner.invoke(
            app, ["weights", "import", "timm:test_vit", str(tmp_path / "copied.pth"), "--force"]
        )
    )


def test_imported_copy_takes_precedence_over_the_hf_cache(offline_weights, tmp_path, test_vit_state):
    other = _build("test_vit.r160_in1k", seed=9).state_dict()
    safeload.save_state_dict(other, tmp_path / "hub.safetensors")
    offline_weights.put("timm/test_vit.r160_in1k", {"model.safetensors": tmp_path / "hub.safetensors"})
    source = resolve.weight_source("timm:test_vit.r160_in1k")
    assert store.locate(source).origin == "hf-cache"
    safeload.save_state_dict(test_vit_state, tmp_path / "mine.safetensors")
    store.import_weights(source, "timm:test_vit.r160_in1k", tmp_path / "mine.safetensors")
    assert store.locate(source).origin == "imported"
    model, _ = build.create_model("timm:test_vit.r160_in1k", 2)
    assert torch.equal(
        model.state_dict()["blocks.0.mlp.fc1.weight"], test_vit_state["blocks.0.mlp.fc1.weight"]
    )


def test_import_refuses_unsafe_pickles_and_wrong_architectures(offline_weights, cli_runner, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Marker(marker)}, tmp_path / "evil.pth")
    _refused(
        cli_runner.invoke(app, ["weights", "import", "dinov2-vits14", str(tmp_path / "evil.pth")]),
        "refusing to load this pickle",
        "arbitrary code",
    )
    assert not marker.exists()
    dest = store.cxrbench_home() / "weights" / "vit_small_patch14_dinov2.lvd142m"
    assert not (dest / "model.safetensors").exists()

    safeload.save_state_dict(_build("test_vit").state_dict(), tmp_path / "small.safetensors")
    _refused(
        cli_runner.invoke(app, ["weights", "import", "dinov2-vits14", str(tmp_path / "small.safetensors")]),
        "do not fit",
    )
    assert not (dest / "model.safetensors").exists() and not list(dest.glob(".staged*"))
    _refused(
        cli_runner.invoke(app, ["weights", "import", "random-vit-test", str(tmp_path / "small.safetensors")]),
        "takes no imported weights",
    )
    _refused(
        cli_runner.invoke(app, ["weights", "import", "dinov2-vits14", str(tmp_path / "absent.pth")]),
        "not found",
    )


@pytest.mark.slow
def test_import_original_meta_dinov2_registers_checkpoint(offline_weights, cli_runner, tmp_path):
    """Meta's dinov2_vits14_reg4_pretrain.pth layout (register_tokens, cls slot in pos_embed, mask_token)
    imports as is; timm's filter converts it at load time to exactly the timm weights."""
    timm_sd = _build("vit_small_patch14_reg4_dinov2.lvd142m", num_classes=0).state_dict()
    meta = {k: v for k, v in timm_sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    slot = torch.randn(1, 1, timm_sd["pos_embed"].shape[-1], generator=torch.Generator().manual_seed(0))
    meta["register_tokens"] = timm_sd["reg_token"]
    meta["pos_embed"] = torch.cat([slot, timm_sd["pos_embed"]], dim=1)
    meta["cls_token"] = timm_sd["cls_token"] - slot
    meta["mask_token"] = torch.zeros(1, timm_sd["cls_token"].shape[-1])
    torch.save(meta, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    _ok(
        cli_runner.invoke(
            app, ["weights", "import", "dinov2-vits14-reg", str(tmp_path / "dinov2_vits14_reg4_pretrain.pth")]
        )
    )
    model, info = build.create_model("dinov2-vits14-reg", 3)
    state = model.state_dict()
    assert info.weights_origin == "imported" and info.image_size == 518
    for key, value in timm_sd.items():
        assert torch.allclose(state[key], value, atol=1e-6), key


# --------------------------------------------------------------------------- fetch


def _fake_download(hub, calls: list):
    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        sd = _build("test_vit.r160_in1k", seed=5).state_dict()
        tmp = Path(kwargs["cache_dir"]).parent / f"dl-{filename}"
        safeload.save_state_dict(sd, tmp)
        return str(hub.put(repo_id, {filename: tmp}) / filename)

    return download


def test_fetch_downloads_into_the_hf_cache_then_works_offline(offline_weights, cli_runner, monkeypatch):
    import huggingface_hub

    calls: list = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(offline_weights, calls))
    result = cli_runner.invoke(app, ["weights", "fetch", "timm:test_vit.r160_in1k"])
    _ok(result)
    assert [(c[0], c[1]) for c in calls] == [("timm/test_vit.r160_in1k", "model.safetensors")]
    assert calls[0][2]["cache_dir"] == str(offline_weights.cache)
    assert "fetched" in result.output
    _ok(second := cli_runner.invoke(app, ["weights", "fetch", "timm:test_vit.r160_in1k"]))
    assert "already present" in second.output and len(calls) == 1

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_download(None, []))  # would crash if used
    _, info = build.create_model("timm:test_vit.r160_in1k", 2)
    assert info.weights_origin == "hf-cache" and info.weights_revision


def test_fetch_falls_back_to_pytorch_model_bin(offline_weights, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    calls: list = []
    inner = _fake_download(offline_weights, calls)

    def download(repo_id, filename, **kwargs):
        if filename == "model.safetensors":
            raise errors.EntryNotFoundError("no such file")
        return inner(repo_id, filename, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    found = store.fetch(resolve.weight_source("timm:test_vit.r160_in1k"), "timm:test_vit.r160_in1k")
    assert found.path.name == "pytorch_model.bin" and calls[0][1] == "pytorch_model.bin"


def _raise(exc):
    def download(*args, **kwargs):
        raise exc

    return download


@pytest.mark.parametrize(
    ("error", "texts"),
    [
        (
            "gated",
            ["gated", "https://huggingface.co/timm/vit_small_patch16_dinov3.lvd1689m", "hf auth login"],
        ),
        ("offline-net", ["could not reach", "cxrbench weights import dinov3-vits16 FILE"]),
        ("missing-repo", ["not found", "HF_TOKEN"]),
    ],
)
def test_fetch_errors_explain_the_fix(offline_weights, cli_runner, monkeypatch, error, texts):
    import huggingface_hub
    from huggingface_hub import errors

    cls = {
        "gated": errors.GatedRepoError,
        "offline-net": errors.LocalEntryNotFoundError,
        "missing-repo": errors.RepositoryNotFoundError,
    }[error]
    exc = cls.__new__(cls)  # HTTP errors want an HTTP response object; the type is what matters here
    Exception.__init__(exc, f"simulated {error}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(exc))
    _refused(cli_runner.invoke(app, ["weights", "fetch", "dinov3-vits16"]), *texts)


def test_fetch_offline_or_without_weights_is_refused(offline_weights, cli_runner):
    _refused(
        cli_runner.invoke(app, ["weights", "fetch", "dinov2-vitb14"]),
        "HF_HUB_OFFLINE",
        "cxrbench weights import dinov2-vitb14 FILE",
    )
    _refused(cli_runner.invoke(app, ["weights", "fetch", "random-vit-test"]), "no pretrained weights")
    _refused(cli_runner.invoke(app, ["weights", "fetch", "dinov2-vitb15"]), "dinov2-vitb14")


# --------------------------------------------------------------------------- list


def test_list_shows_every_init_and_where_its_weights_are(
    offline_weights, cli_runner, tmp_path, test_vit_state
):
    safeload.save_state_dict({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    snapshot = offline_weights.put(
        "timm/vit_base_patch14_dinov2.lvd142m", {"model.safetensors": tmp_path / "w.safetensors"}
    )
    result = cli_runner.invoke(app, ["weights", "list"])
    _ok(result)
    lines = result.output.splitlines()
    assert lines[0].split()[:7] == [
        "INIT",
        "TIMM_MODEL",
        "PATCH",
        "RESOLUTION",
        "NORMALIZATION",
        "LICENSE",
        "PRESENT",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and line.split()[0] in registry.INITS}
    assert set(rows) == set(registry.INITS)
    assert rows["dinov2-vitb14"][1:7] == [
        "vit_base_patch14_dinov2.lvd142m",
        "14",
        "518",
        "imagenet",
        "apache-2.0",
        "yes",
    ]
    assert str(snapshot / "model.safetensors") in result.output
    assert rows["imagenet21k-vitb16"][4:7] == ["0.5/0.5", "apache-2.0", "no"]
    assert rows["dinov3-convnext-b"][2:4] == ["-", "224"]

    as_json = cli_runner.invoke(app, ["weights", "list", "dinov2-vitb*", "--json"])
    _ok(as_json)
    parsed = json.loads(as_json.output)
    assert [r["init"] for r in parsed] == ["dinov2-vitb14", "dinov2-vitb14-reg"]
    assert parsed[0]["present"] == "yes" and parsed[1]["present"] == "no"
    assert os.path.isfile(parsed[0]["location"].split(": ", 1)[1])


def test_import_force_replaces_only_an_import_cxrbench_made(offline_weights, tmp_path, cli_runner):
    safeload.save_state_dict(_build("test_vit").state_dict(), tmp_path / "w.safetensors")
    dest = store.cxrbench_home() / "weights" / "test_vit.r160_in1k"
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"placed here by hand")
    (dest / "NOTES.txt").write_text("mine")
    result = cli_runner.invoke(app, ["weights", "import", "timm:test_vit.r160_in1k",
                                     str(tmp_path / "w.safetensors"), "--force"])
    assert result.exit_code == 2 and "not cxrbench's to replace" in result.stderr
    assert (dest / "model.safetensors").read_bytes() == b"placed here by hand"
    (dest / "model.safetensors").unlink()
    for _ in range(2):  # a real import, then --force over it: replaced; the foreign file stays
        result = cli_runner.invoke(app, ["weights", "import", "timm:test_vit.r160_in1k",
                                         str(tmp_path / "w.safetensors"), "--force"])
        assert result.exit_code == 0, result.output
    assert (dest / "NOTES.txt").read_text() == "mine" and (dest / "weights.json").is_file()
