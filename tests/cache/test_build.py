"""Cache build (`prepare_cache`, `cxrbench prepare`): content, resume after SIGKILL, idempotence,
recipe changes, bad files, and opening a cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cxrbench.cache.preprocess as preprocess_module
from cxrbench.cache.build import index_hash, prepare_cache
from cxrbench.cache.decode import read_image
from cxrbench.cache.preprocess import preprocess
from cxrbench.cache.read import open_cache
from cxrbench.common.errors import InputError
from cxrbench.common.layout import CACHE_BUILD_DIR as BUILD_DIR
from cxrbench.index.schema import read_findings, read_index


@pytest.fixture
def dataset(tmp_path: Path, image_dataset_factory) -> tuple[Path, Path]:
    root = tmp_path / "data"
    return image_dataset_factory(root, n=12), root


def _expected(root: Path, rel: str, size: int, resize: str = "stretch", equalize: bool = True) -> np.ndarray:
    return preprocess(read_image(root / rel), size, resize, equalize)


def _count_preprocess(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = preprocess_module.preprocess

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(preprocess_module, "preprocess", counting)
    return calls


@pytest.mark.parametrize("workers", [1, 2])
def test_build_stores_every_image_in_index_order(dataset, tmp_path: Path, workers: int):
    index, root = dataset
    out = tmp_path / "cache"
    manifest = prepare_cache(index, root, out, size=24, resize="pad", workers=workers, quiet=True)
    cache = open_cache(out)
    src, findings = read_index(index)
    assert cache.images.shape == (12, 24, 24) and cache.images.dtype == np.uint8 and cache.size == 24
    assert cache.findings == findings == read_findings(out / "index.parquet")
    assert list(cache.index["image_id"]) == list(src["image_id"])
    np.testing.assert_array_equal(cache.index["cache_row"], np.arange(12))
    for f in findings:  # labels travel unchanged, NaN included
        np.testing.assert_array_equal(cache.index[f].to_numpy(), src[f].to_numpy())
    for row, rel in zip(cache.index["cache_row"], cache.index["path"], strict=True):
        np.testing.assert_array_equal(cache.images[row], _expected(root, rel, 24, "pad"))
    assert manifest["recipe"]["size"] == 24 and manifest["recipe"]["resize"] == "pad"
    assert manifest["recipe"]["index_hash"] == index_hash(src, findings)
    assert manifest["counts"]["images"] == 12 and manifest["failures"] == []
    assert manifest["shape"] == [12, 24, 24] and manifest["version"] and manifest["created"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not (out / BUILD_DIR).exists()
    assert cache.recipe == {"size": 24, "resize": "pad", "equalize": True, "resample": "area"}
    assert manifest["decoders"]["pillow"] and manifest["decoders"]["opencv-python-headless"]


def test_same_recipe_is_nothing_to_do_and_dataframe_input_matches(dataset, tmp_path: Path, monkeypatch):
    index, root = dataset
    out = tmp_path / "cache"
    first = prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    stamp = (out / "images.u8").stat().st_mtime_ns
    calls = _count_preprocess(monkeypatch)
    df, findings = read_index(index)
    again = prepare_cache(df, root, out, size=16, workers=1, quiet=True, findings=findings)
    assert calls == [] and again == first
    assert (out / "images.u8").stat().st_mtime_ns == stamp


def test_other_recipe_is_refused_unless_overwrite(dataset, tmp_path: Path):
    index, root = dataset
    out = tmp_path / "cache"
    prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    with pytest.raises(InputError, match="different recipe .*size=16.*size=20.*overwrite=True"):
        prepare_cache(index, root, out, size=20, workers=1, quiet=True)
    with pytest.raises(InputError, match="different recipe"):
        prepare_cache(index, root, out, size=16, equalize=False, workers=1, quiet=True)
    manifest = prepare_cache(index, root, out, size=20, workers=1, quiet=True, overwrite=True)
    assert manifest["shape"] == [12, 20, 20] and open_cache(out).images.shape == (12, 20, 20)
    again = prepare_cache(index, root, out, size=20, workers=1, quiet=True, overwrite=True)
    assert again == manifest  # --overwrite never rebuilds the same recipe


def test_out_must_be_new_empty_or_a_cache(dataset, tmp_path: Path):
    index, root = dataset
    with pytest.raises(InputError, match="not empty and is not a cxrbench cache"):
        prepare_cache(index, root, root, size=16, workers=1, quiet=True, overwrite=True)
    with pytest.raises(InputError, match="root is not a directory"):
        prepare_cache(index, tmp_path / "nowhere", tmp_path / "c", workers=1, quiet=True)
    with pytest.raises(InputError, match="^prepare: workers=0 is not a positive number"):
        prepare_cache(index, root, tmp_path / "c", workers=0, quiet=True)


def test_bad_images_fail_at_the_end_then_retry_only_them(dataset, tmp_path: Path, monkeypatch):
    index, root = dataset
    df, _ = read_index(index)
    truncated, missing = root / df["path"][2], root / df["path"][5]
    good_bytes = truncated.read_bytes()
    truncated.write_bytes(good_bytes[: len(good_bytes) // 3])
    missing_bytes = missing.read_bytes()
    missing.unlink()
    out = tmp_path / "cache"
    with pytest.raises(InputError) as info:
        prepare_cache(index, root, out, size=16, workers=2, quiet=True)
    message = info.value.one_line()
    assert "2 image(s) could not be read" in message and "skip_bad=True" in message
    assert f"{df['path'][2]} (corrupt or truncated" in message
    assert f"{df['path'][5]} (image file not found" in message
    assert not (out / "manifest.json").exists()
    with pytest.raises(InputError, match="incomplete"):
        open_cache(out)
    truncated.write_bytes(good_bytes)  # the user fixes the files and reruns: only those two are redone
    missing.write_bytes(missing_bytes)
    calls = _count_preprocess(monkeypatch)
    manifest = prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    assert len(calls) == 2 and manifest["counts"]["images"] == 12
    np.testing.assert_array_equal(open_cache(out).images[2], _expected(root, df["path"][2], 16))


def test_skip_bad_drops_and_lists_them(dataset, tmp_path: Path):
    index, root = dataset
    df, findings = read_index(index)
    (root / df["path"][7]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "cache"
    manifest = prepare_cache(index, root, out, size=16, workers=2, skip_bad=True, quiet=True)
    assert manifest["counts"] == {"index_rows": 12, "images": 11, "failed": 1,
                                  "by_split": manifest["counts"]["by_split"]}
    assert sum(manifest["counts"]["by_split"].values()) == 11
    assert manifest["failures"][0]["image_id"] == df["image_id"][7]
    assert manifest["failures"][0]["path"] == df["path"][7] and manifest["failures"][0]["reason"]
    cache = open_cache(out)
    assert df["image_id"][7] not in set(cache.index["image_id"])
    assert 7 not in set(cache.index["cache_row"])
    for row, rel in zip(cache.index["cache_row"], cache.index["path"], strict=True):
        np.testing.assert_array_equal(cache.images[row], _expected(root, rel, 16))


def test_resume_after_sigkill_does_not_redo_finished_chunks(tmp_path: Path, image_dataset_factory,
                                                             monkeypatch):
    root = tmp_path / "data"
    index = image_dataset_factory(root, n=24)
    out = tmp_path / "cache"
    script = (
        "import time, cxrbench.cache.preprocess as pp\n"
        "orig = pp.preprocess\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.03)\n"
        "    return orig(*a, **k)\n"
        "pp.preprocess = slow\n"
        "from cxrbench.cache.build import prepare_cache\n"
        f"prepare_cache({str(index)!r}, {str(root)!r}, {str(out)!r}, size=16, workers=1, quiet=True,\n"
        "              chunk_size=4)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    chunks = out / BUILD_DIR / "chunks"
    try:
        deadline = time.monotonic() + 60
        while len(list(chunks.glob("*.json"))) < 2:
            assert proc.poll() is None, "the build finished before it could be killed"
            assert time.monotonic() < deadline, "the build never finished a chunk"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    done = len(list(chunks.glob("*.json")))
    assert 2 <= done < 6
    calls = _count_preprocess(monkeypatch)
    prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    assert len(calls) == 24 - 4 * done  # finished chunks were not redone
    cache = open_cache(out)
    for row, rel in zip(cache.index["cache_row"], cache.index["path"], strict=True):
        np.testing.assert_array_equal(cache.images[row], _expected(root, rel, 16))


def test_concurrent_build_is_refused_and_all_bad_is_an_error(dataset, tmp_path: Path):
    fcntl = pytest.importorskip("fcntl")
    index, root = dataset
    out = tmp_path / "cache"
    out.mkdir()
    fd = os.open(out / ".prepare.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is building
        with pytest.raises(InputError, match="another `cxrbench prepare` is building"):
            prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    finally:
        os.close(fd)
    prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["images.u8", "index.parquet", "manifest.json"]
    with pytest.raises(InputError, match="none of the 12 images could be read"):
        prepare_cache(index, tmp_path, tmp_path / "other", size=16, workers=1, skip_bad=True, quiet=True)


def test_open_cache_errors(dataset, tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        open_cache(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        open_cache(tmp_path / "empty")
    index, root = dataset
    out = tmp_path / "cache"
    prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    with open(out / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(InputError, match="holds 100 bytes .*--overwrite"):
        open_cache(out)
    (out / "index.parquet").unlink()
    with pytest.raises(InputError, match="index.parquet is missing"):
        open_cache(out)


# -- the command ------------------------------------------------------------------------------------
def test_prepare_command(dataset, tmp_path: Path, cli_runner):
    from cxrbench.cli import app

    index, root = dataset
    out = tmp_path / "cache"
    help_ = cli_runner.invoke(app, ["prepare", "--help"])
    assert help_.exit_code == 0 and "--skip-bad" in help_.output and "--resize" in help_.output
    args = ["prepare", "--index", str(index), "--root", str(root), "--out", str(out), "--size", "16",
            "-j", "1"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "12 images of 16x16 (stretch, equalized, area resampling)" in result.stderr
    again = cli_runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    bad = cli_runner.invoke(app, [*args, "--resize", "strech"])
    assert bad.exit_code == 2 and "did you mean 'stretch'" in bad.stderr and "Traceback" not in bad.output
    other = cli_runner.invoke(app, [*args, "--size", "20"])
    assert other.exit_code == 2 and "different recipe" in other.stderr


def test_prepare_command_names_bad_files(dataset, tmp_path: Path, cli_runner):
    from cxrbench.cli import app

    index, root = dataset
    df, _ = read_index(index)
    (root / df["path"][0]).unlink()
    args = ["prepare", "--index", str(index), "--root", str(root), "--out", str(tmp_path / "c"),
            "--size", "16", "-j", "1", "--quiet"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 2 and df["path"][0] in result.stderr and "Traceback" not in result.output
    skipped = cli_runner.invoke(app, [*args, "--skip-bad"])
    assert skipped.exit_code == 0 and skipped.stderr == ""
    missing_index = cli_runner.invoke(app, ["prepare", "--index", str(tmp_path / "no.parquet"), "--root",
                                            str(root), "--out", str(tmp_path / "d")])
    assert missing_index.exit_code == 2 and "index file not found" in missing_index.stderr


def test_every_phantom_format_decodes_right_way_up(tmp_path: Path):
    """Each official layout (PNG, RGBA PNG, JPEG, 10/12-bit PNG, MONOCHROME1/2 DICOM) through the cache:
    every frontal image resembles the NIH PNGs' mean (an un-inverted MONOCHROME1 would anti-correlate)
    and, without equalization, 16-bit and DICOM sources are as bright as 8-bit ones (no /65535)."""
    phantom = pytest.importorskip("cxrbench.phantom")
    if not hasattr(phantom, "generate"):
        pytest.skip("the phantom generator is not available")
    reference = None
    for fmt, opts in (("nih", {"rgba_rate": 0.5}), ("chexpert", {}), ("mimic", {}), ("padchest", {}),
                      ("vindr", {"monochrome1_rate": 0.5}), ("csv", {})):
        root = tmp_path / fmt
        truth = phantom.generate(root, fmt, 6, size=64, seed=2, quiet=True, **opts)
        for equalize in (True, False):
            out = tmp_path / f"cache-{fmt}-{equalize}"
            manifest = prepare_cache(root / "_phantom" / "truth.parquet", root, out, size=32,
                                     equalize=equalize, workers=1, quiet=True)
            assert manifest["counts"]["images"] == len(truth) and not manifest["failures"]
            cache = open_cache(out)
            frontal = cache.index["view"].isin(["PA", "AP", "AP_SUPINE"]).to_numpy()
            images = cache.images[cache.index["cache_row"].to_numpy()[frontal]].astype(np.float64)
            if equalize:
                reference = images.mean(0) if reference is None else reference
                corr = [np.corrcoef(img.ravel(), reference.ravel())[0, 1] for img in images]
                assert min(corr) > 0.3, (fmt, corr)
            else:
                assert 60 < images.mean() < 200, (fmt, images.mean())


def test_write_cache_makes_the_files_prepare_makes(tmp_path):
    """The library's in-memory writer (used by the tests' tiny caches) goes through prepare's final step."""
    from cxrbench.cache.build import write_cache

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)], "patient_id": [f"p{k}" for k in range(6)],
                       "study_id": None, "path": [f"x/{k}.png" for k in range(6)], "view": "PA",
                       "split": ["train", "train", "val", "val", "test", "test"], "dataset": "nih",
                       "sex": "F", "age": 40.0, "edema": np.array([1, 0, 1, 0, 1, np.nan], np.float32)})
    manifest = write_cache(tmp_path / "c", images, df, ["edema"])
    cache = open_cache(tmp_path / "c")
    assert manifest["recipe"]["size"] == 8
    assert cache.recipe == {"size": 8, "resize": "stretch", "equalize": True, "resample": "area"}
    np.testing.assert_array_equal(np.asarray(cache.images), images)
    assert cache.findings == ["edema"] and cache.columns(["image_id"])["image_id"].tolist()[0] == "i0"
    assert cache.index["cache_row"].tolist() == list(range(6))
    with pytest.raises(InputError, match="not empty"):
        write_cache(tmp_path / "c", images, df, ["edema"])
    with pytest.raises(InputError, match="uint8"):
        write_cache(tmp_path / "d", images.astype(np.float32), df, ["edema"])


def test_prepare_overwrite_replaces_only_the_cache_own_files(tmp_path, image_dataset_factory):
    index = image_dataset_factory(tmp_path / "data", n=8)
    root = tmp_path / "data"
    out = tmp_path / "cache"
    prepare_cache(index, root, out, size=16, workers=1, quiet=True)
    (out / "README.txt").write_text("my notes about this cache")
    (out / ".build").mkdir()
    (out / ".build" / "mine.txt").write_text("mine")
    prepare_cache(index, root, out, size=24, workers=1, quiet=True, overwrite=True)  # another recipe
    assert open_cache(out).size == 24
    assert (out / "README.txt").read_text() == "my notes about this cache"
    assert (out / ".build" / "mine.txt").read_text() == "mine"


def test_prepare_refuses_a_folder_whose_manifest_is_not_a_cache(tmp_path, image_dataset_factory):
    index = image_dataset_factory(tmp_path / "data", n=4)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "another tool"}')
    (out / "images.u8").write_bytes(b"their data")
    with pytest.raises(InputError, match="not a cxrbench cache manifest"):
        prepare_cache(index, tmp_path / "data", out, size=16, workers=1, quiet=True, overwrite=True)
    assert (out / "images.u8").read_bytes() == b"their data"


def test_a_corrupt_exif_warning_is_counted_in_the_manifest_not_printed(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(root / "img" / "a.jpg",
                                                           exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(root / "img" / "b.png")
    df = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p1", "p2"], "study_id": None,
                       "path": ["img/a.jpg", "img/b.png"], "view": "PA", "split": ["train", "test"],
                       "dataset": "csv", "sex": "F", "age": 50.0, "edema": np.array([1, 0], np.float32)})
    manifest = prepare_cache(df, root, tmp_path / "c", size=16, workers=1, quiet=True, findings=["edema"])
    captured = capsys.readouterr()
    assert "EXIF" not in captured.err + captured.out and "site-packages" not in captured.err
    warned = manifest["warnings"]
    assert warned and warned[0]["files"] == 1 and warned[0]["examples"] == ["img/a.jpg"]
    assert "EXIF" in warned[0]["message"].upper() and ".py" not in warned[0]["message"]


def test_prepare_off_a_terminal_prints_plain_progress_lines(tmp_path, image_dataset_factory, cli_runner,
                                                            monkeypatch):
    """A log or a SLURM output gets periodic lines (done/total, images/s, ETA), not a silent wait."""
    from cxrbench.cli import app

    index = image_dataset_factory(tmp_path / "data", n=24)
    monkeypatch.setenv("CXRBENCH_PROGRESS_SECONDS", "0")
    result = cli_runner.invoke(app, ["prepare", "--index", str(index), "--root", str(tmp_path / "data"),
                                     "--out", str(tmp_path / "cache"), "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("prepare: ")]
    assert lines and lines[-1].startswith("prepare: 24/24 images (100%)") and "images/s" in lines[-1]
    quiet = cli_runner.invoke(app, ["prepare", "--index", str(index), "--root", str(tmp_path / "data"),
                                    "--out", str(tmp_path / "cache2"), "--size", "32", "--workers", "1",
                                    "-q"])
    assert quiet.exit_code == 0 and "prepare: " not in quiet.stderr
