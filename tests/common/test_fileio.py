import json
import re

import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path, atomic_write_json, read_json, resolve_inside


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


def test_json_safe_is_the_one_sanitizer(tmp_path):
    import json
    import math

    import numpy as np

    from cxrbench.common.fileio import atomic_write_json, json_safe

    obj = {"nan": float("nan"), "inf": math.inf, "ninf": -np.inf, "np": np.float32(0.5), "i": np.int64(3),
           "arr": np.array([1.0, np.nan]), "tup": (1, 2), 4: "key", "flag": np.bool_(True)}
    safe = json_safe(obj)
    assert safe == {"nan": None, "inf": "inf", "ninf": "-inf", "np": 0.5, "i": 3, "arr": [1.0, None],
                    "tup": [1, 2], "4": "key", "flag": True}
    atomic_write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == safe  # strict JSON: no NaN tokens


def test_file_lock_excludes_a_second_holder(tmp_path):
    import multiprocessing as mp

    import pytest

    from cxrbench.common.fileio import file_lock

    lock = tmp_path / "locks" / "a.lock"
    ctx = mp.get_context("fork")
    with file_lock(lock):
        child = ctx.Process(target=_try_lock, args=(str(lock),))
        child.start()
        child.join(30)
        assert child.exitcode == 3  # busy while held
    child = ctx.Process(target=_try_lock, args=(str(lock),))
    child.start()
    child.join(30)
    assert child.exitcode == 0  # free once released
    with pytest.raises(BlockingIOError), file_lock(lock), file_lock(lock, wait=False):
        pass  # flock locks are per open file: a second descriptor in one process is refused too


def _try_lock(path: str) -> None:
    import os

    from cxrbench.common.fileio import file_lock

    try:
        with file_lock(path, wait=False):
            os._exit(0)
    except BlockingIOError:
        os._exit(3)


@pytest.mark.parametrize(("content", "said"), [
    (b"", "is empty (0 bytes)"),
    (b"image_id,label\na,1\n", "must be a Parquet file, but this is CSV/TSV text"),
    (b"just some words\n", "must be a Parquet file, but this is a text file"),
    (b"caf\xe9 au lait\n", "text that is not UTF-8"),
    (b"\x80\x04K\x01.", "a pickle or NumPy file"),
    (b"PAR1 truncated", "is not a readable Parquet file"),
])
def test_a_parquet_file_the_user_names_is_checked_by_its_bytes(tmp_path, content, said):
    import pyarrow.parquet as pq

    from cxrbench.common.fileio import parquet_errors

    path = tmp_path / "index.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(said)) as err, parquet_errors(path, "index", fix="fix it"):
        pq.read_schema(path)
    assert str(path) in err.value.one_line() and err.value.one_line().endswith("Fix: fix it")
