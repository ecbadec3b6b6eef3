"""Every door through which a weight file enters cxrbench, given pickles disguised under every weight
extension and damaged safetensors files: one ``error:`` line, exit 2, no traceback, and nothing of the
pickle ever runs (each pickle would create a marker file when unpickled).

Doors: ``weights import FILE`` and ``weights import FOLDER``, ``--init checkpoint:FILE`` (with its
``.json``), ``--init checkpoint:RUN`` (``best.safetensors``), ``--init local-dir:FOLDER`` (timm's
``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), a registered init read from the
Hugging Face cache, a trained run's ``best.safetensors`` read by ``evaluate``, ``predict`` and
``export``, and the ``checkpoints/last.pt`` that ``train`` resumes from (pretraining resumes through
the same reader: tested directly).
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError

EXTENSIONS = (".safetensors", ".pth", ".bin", ".pt", ".ckpt")


class _Marker:
    """Unpickling this object creates ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _kinds(tmp: Path, marker: Path) -> dict[str, bytes]:
    """Bad weight files by kind: pickles that would run code, and damaged safetensors."""
    from safetensors.torch import save_file

    evil = {"head.weight": torch.zeros(2, 2), "x": _Marker(marker)}
    kinds = {
        "pickle-protocol-2": pickle.dumps(evil, protocol=2),
        "pickle-protocol-5": pickle.dumps(evil, protocol=5),
        "pickle-protocol-0": pickle.dumps(evil, protocol=0),
    }
    torch.save(evil, tmp / "zip.pt")
    kinds["torch-zip-pickle"] = (tmp / "zip.pt").read_bytes()
    torch.save(evil, tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    kinds["torch-legacy-pickle"] = (tmp / "legacy.pt").read_bytes()
    save_file({"head.weight": torch.zeros(8, 8)}, str(tmp / "ok.safetensors"))
    full = (tmp / "ok.safetensors").read_bytes()
    kinds["truncated-safetensors"] = full[:-7]
    kinds["truncated-safetensors-header"] = full[:24]
    kinds["safetensors-bad-header"] = struct.pack("<Q", 12) + b"{not json!}"
    kinds["empty"] = b""
    return kinds


KIND_NAMES = ("pickle-protocol-2", "pickle-protocol-5", "pickle-protocol-0", "torch-zip-pickle",
              "torch-legacy-pickle", "truncated-safetensors", "truncated-safetensors-header",
              "safetensors-bad-header", "empty")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_weights")
    marker = tmp / "CODE-RAN"
    return _kinds(tmp, marker), marker


def _train(cache: Path, init: str, out: Path) -> list[str]:
    return ["train", "--cache", str(cache), "--init", init, "--out", str(out), "--epochs", "1",
            "--workers", "0", "--batch-size", "8", "--allow-overlap"]  # overlap: metadata, not weights


def _place(door: str, ext: str, data: bytes, tmp: Path, run: Path, cache: Path, hub) -> list[str]:
    """Put ``data`` where ``door`` reads a weight file; return the command line that reads it."""
    if door == "weights import FILE":
        path = tmp / f"weights{ext}"
        path.write_bytes(data)
        return ["weights", "import", "timm:test_vit.r160_in1k", str(path)]
    if door == "weights import FOLDER":
        (tmp / "repo").mkdir()
        (tmp / "repo" / ext).write_bytes(data)  # ext is the file name here
        return ["weights", "import", "timm:test_vit.r160_in1k", str(tmp / "repo")]
    if door == "--init checkpoint:FILE":
        path = tmp / f"weights{ext}"
        path.write_bytes(data)
        path.with_suffix(".json").write_text(json.dumps({"arch": "test_vit", "image_size": 32}))
        return _train(cache, f"checkpoint:{path}", tmp / "out")
    if door == "--init checkpoint:RUN":
        copy = tmp / "source-run"
        shutil.copytree(run, copy)
        (copy / "best.safetensors").write_bytes(data)
        return _train(cache, f"checkpoint:{copy}", tmp / "out")
    if door == "--init local-dir:FOLDER":
        folder = tmp / "timm-folder"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 1000}))
        (folder / ext).write_bytes(data)
        return _train(cache, f"local-dir:{folder}", tmp / "out")
    if door == "hf cache":
        hub.put("timm/test_vit.r160_in1k", {ext: data, "config.json": json.dumps(
            {"architecture": "test_vit", "num_classes": 1000}).encode()})
        return _train(cache, "timm:test_vit.r160_in1k", tmp / "out")
    copy = tmp / "run"
    shutil.copytree(run, copy)
    if door == "train resume (last.pt)":
        (copy / "checkpoints" / "last.pt").write_bytes(data)
        return ["train", "--out", str(copy)]
    (copy / "best.safetensors").write_bytes(data)
    if door == "evaluate RUN":
        return ["evaluate", str(copy), "--bootstrap", "0", "--repredict", "-q"]
    if door == "predict RUN":
        image = tmp / "x.png"
        from PIL import Image

        Image.new("L", (40, 40), 90).save(image)
        return ["predict", str(copy), str(image)]
    assert door == "export RUN"
    return ["export", str(copy), str(tmp / "export")]


FILE_DOORS = ("weights import FILE", "--init checkpoint:FILE")
NAMED_DOORS = {  # door -> the file names it reads
    "weights import FOLDER": ("model.safetensors", "pytorch_model.bin"),
    "--init local-dir:FOLDER": ("model.safetensors", "pytorch_model.bin"),
    "hf cache": ("model.safetensors", "pytorch_model.bin"),
    "--init checkpoint:RUN": ("best.safetensors",),
    "evaluate RUN": ("best.safetensors",),
    "predict RUN": ("best.safetensors",),
    "export RUN": ("best.safetensors",),
    "train resume (last.pt)": ("last.pt",),
}
CASES = [pytest.param(door, ext, kind, id=f"{door}:{kind}{ext}") for door in FILE_DOORS for ext in EXTENSIONS
         for kind in KIND_NAMES]
CASES += [pytest.param(door, name, kind, id=f"{door}:{kind}:{name}") for door, names in NAMED_DOORS.items()
          for name in names for kind in KIND_NAMES]


@pytest.mark.parametrize(("door", "ext", "kind"), CASES)
def test_one_line_and_nothing_runs(door, ext, kind, bad, tiny_run, offline_weights, cli_runner, tmp_path,
                                   torch_one_thread):
    kinds, marker = bad
    run, cache = tiny_run
    argv = _place(door, ext, kinds[kind], tmp_path, run, cache, offline_weights)
    result = cli_runner.invoke(app, argv)
    out = result.output + (result.stderr or "")
    assert result.exit_code == 2, (argv, result.exit_code, out, result.exception)
    assert "Traceback" not in out and "Warning" not in out, out
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    if kind.startswith(("pickle", "torch")) and kind != "pickle-protocol-0":
        assert any(w in err[0] for w in ("refusing to load this pickle", "holds PyTorch (pickle) data",
                                          "not unpickled", "arbitrary code", "damaged PyTorch file",
                                          "torch.load(weights_only=True)")), err[0]
    assert not marker.exists(), "a pickle ran"
    weights = Path(offline_weights.cache).parent / "cxrbench-home" / "weights"
    assert not weights.exists() or not any(weights.iterdir())  # a refused import leaves nothing behind


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_the_resume_reader_of_training_and_pretraining_refuses_in_one_error(kind, bad, tmp_path):
    from cxrbench.train.checkpoint import load_last

    kinds, marker = bad
    path = tmp_path / "last.pt"
    path.write_bytes(kinds[kind])
    with pytest.raises(InputError) as err:
        load_last(path)
    assert str(path) in err.value.one_line()
    assert not marker.exists()


def test_a_real_state_dict_under_a_safetensors_name_is_read_by_its_bytes(tmp_path):
    """Formats are told by content, not name: torch.load would hand a '.safetensors' path to safetensors."""
    from cxrbench.models.safeload import load_state_dict

    sd = {"head.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, tmp_path / "really-a.pth.safetensors")
    loaded = load_state_dict(tmp_path / "really-a.pth.safetensors")
    assert torch.equal(loaded["head.weight"], sd["head.weight"])


def test_the_cases_cover_every_door_extension_and_kind():
    assert len(CASES) == (len(FILE_DOORS) * len(EXTENSIONS) + 11) * len(KIND_NAMES)


def test_the_pickles_would_run_code_if_unpickled(tmp_path):
    """The control: plain unpickling of these files does create the marker, so its absence above means
    that nothing ran."""
    probe = tmp_path / "probe"
    kinds = _kinds(tmp_path, probe)
    for kind in ("pickle-protocol-2", "pickle-protocol-5", "pickle-protocol-0"):
        pickle.loads(kinds[kind])
        assert probe.exists(), kind
        probe.unlink()
