"""export.files: an export replaces only files it wrote, unchanged; everything else in OUT survives."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.export.files import check_writable, exported_files, read_manifest, staged_export


def _export(out, files: dict[str, str]) -> None:
    with staged_export(out, list(files)) as stage:
        for name, text in files.items():
            (stage / name).write_text(text)


def test_a_new_folder_then_a_replacement_of_our_own_files(tmp_path):
    out = tmp_path / "out"
    _export(out, {"a.json": "1", "b.md": "x"})
    assert read_manifest(out).keys() == {"a.json", "b.md"} and (out / "a.json").read_text() == "1"
    _export(out, {"a.json": "2", "c.onnx": "y"})  # a second export into the same folder
    assert (out / "a.json").read_text() == "2" and exported_files(out) == ["a.json", "b.md", "c.onnx"]
    assert not [p for p in out.iterdir() if p.name.startswith(".cxrbench-export-")]  # staging removed


def test_foreign_or_edited_files_are_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "b.md").write_text("theirs")
    with pytest.raises(InputError, match="b.md exists and was not written by cxrbench export"):
        _export(out, {"a.json": "1", "b.md": "x"})
    assert not (out / "a.json").exists() and (out / "b.md").read_text() == "theirs"
    (out / "b.md").unlink()
    _export(out, {"a.json": "1", "b.md": "x"})
    assert (out / "notes.txt").read_text() == "mine" and "notes.txt" not in exported_files(out)
    (out / "b.md").write_text("edited by hand")
    with pytest.raises(InputError, match="changed since"):
        _export(out, {"b.md": "y"})
    assert (out / "b.md").read_text() == "edited by hand"


def test_a_failed_export_changes_nothing(tmp_path):
    out = tmp_path / "out"
    _export(out, {"a.json": "1"})
    with pytest.raises(RuntimeError, match="boom"), staged_export(out, ["a.json"]) as stage:
        (stage / "a.json").write_text("2")
        raise RuntimeError("boom")
    assert (out / "a.json").read_text() == "1" and check_writable(out, ["a.json"]) == read_manifest(out)


def test_a_file_as_target_or_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_writable(tmp_path / "f", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".cxrbench-export.json").write_text("{}")
    with pytest.raises(InputError, match="not an export manifest"):
        check_writable(out, ["a"])
