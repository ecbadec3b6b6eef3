import json

import pytest

from cxrbench.errors import InputError
from cxrbench.fileio import atomic_path, atomic_write_json, read_json, resolve_inside


def test_atomic_write_replaces_and_cleans(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"a": float("nan"), "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": None, "b": [1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_previous_content(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("finished work")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "finished work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_resolve_inside_refuses_escape(tmp_path):
    assert resolve_inside(tmp_path, "a/b.png") == (tmp_path / "a" / "b.png").resolve()
    with pytest.raises(InputError, match="escapes"):
        resolve_inside(tmp_path, "../etc/passwd", where="x.csv row 3")
    with pytest.raises(InputError, match="absolute"):
        resolve_inside(tmp_path, "/etc/passwd")


def test_read_json_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        read_json(bad)


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "report.html"
    atomic_write_json(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
