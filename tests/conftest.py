"""Shared fixtures: locations of real test material, deterministic seeds, CLI runner."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CXR_DIR = Path(os.environ.get("CXRBENCH_REAL_CXR", REPO_ROOT.parent / "shared" / "data" / "real_cxr"))


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """The real radiographs in ../shared/data/real_cxr/ (skip with a reason when absent)."""
    if not REAL_CXR_DIR.is_dir():
        pytest.skip(f"real radiographs not found at {REAL_CXR_DIR} (set CXRBENCH_REAL_CXR)")
    return REAL_CXR_DIR


@pytest.fixture(scope="session")
def xrv_data_dir() -> Path:
    """The real metadata CSVs shipped in the torchxrayvision wheel, found without importing it."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (dev dependency) is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not data.is_dir():
        pytest.skip(f"torchxrayvision has no data/ folder at {data}")
    return data


@pytest.fixture
def cli_runner():
    """Typer's CliRunner: commands run in-process; stderr kept apart from stdout."""
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates stderr
        return CliRunner()


def write_tiny_cache(out: Path, n_patients: int = 60, size: int = 32, seed: int = 0,
                     findings: tuple[str, ...] = ("cardiomegaly", "pleural_effusion"), nan_rate: float = 0.05,
                     dataset: str = "nih", patient_prefix: str = "p") -> Path:
    """A learnable cache (Contract 3, written by the library's cache writer) in a blink: finding k
    brightens region k of noise.

    One image per patient; patients split 60/20/20 into train/val/test. Used by the training tests.
    """
    import numpy as np
    import pandas as pd

    from cxrbench.cache.build import write_cache

    rng = np.random.default_rng(seed)
    labels = (rng.random((n_patients, len(findings))) < 0.4).astype(np.float32)
    labels[rng.random(labels.shape) < nan_rate] = np.nan
    images = rng.normal(90, 25, (n_patients, size, size))
    band = size // max(1, len(findings))
    for k in range(len(findings)):
        images[np.nan_to_num(labels[:, k]) == 1, k * band:(k + 1) * band, : size // 2] += 70
    split = np.array(["train"] * n_patients, dtype=object)
    split[int(0.6 * n_patients):int(0.8 * n_patients)] = "val"
    split[int(0.8 * n_patients):] = "test"
    df = pd.DataFrame({
        "image_id": [f"{patient_prefix}{i:04d}_0" for i in range(n_patients)],
        "patient_id": [f"{patient_prefix}{i:04d}" for i in range(n_patients)],
        "study_id": None, "path": [f"img/{patient_prefix}{i:04d}.png" for i in range(n_patients)],
        "view": "PA", "split": split, "dataset": dataset, "sex": "F", "age": 50.0,
        **{f: labels[:, k] for k, f in enumerate(findings)},
    })
    write_cache(out, np.clip(images, 0, 255).astype(np.uint8), df, list(findings))
    return out


@pytest.fixture(scope="session")
def tiny_cache_factory():
    """``factory(out_dir, **options) -> cache dir``: see :func:`write_tiny_cache`."""
    return write_tiny_cache


def write_dicom(path: Path, pixels, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                **tags) -> Path:
    """An uncompressed single-frame DICOM (with the 128-byte preamble) holding ``pixels`` (uint8/16).

    Extra ``tags`` (e.g. ``WindowCenter=``, ``RescaleSlope=``, ``VOILUTFunction=``) are set as given.
    """
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "phantom"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_image_dataset(root: Path, n: int = 12, shape: tuple[int, int] = (48, 40), seed: int = 0,
                        findings: tuple[str, ...] = ("cardiomegaly", "edema")) -> Path:
    """A small dataset of random gray images cycling through 8-bit PNG, 16-bit PNG (12-bit values),
    JPEG and DICOM files, with a Contract-2 index at ``root/index.parquet`` (returned).

    Labels are random 0/1 with some NaN; splits cycle train/val/test; two images per patient.
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    from cxrbench.index.schema import write_index

    rng = np.random.default_rng(seed)
    kinds = ("png8", "png16", "jpg", "dcm")
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rel = f"images/{i // 8}/img{i:04d}.{kind[:3]}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind in ("png8", "jpg"):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        elif kind == "png16":
            Image.fromarray(rng.integers(0, 4096, shape, dtype=np.uint16)).save(path)
        else:
            write_dicom(path, rng.integers(0, 4096, shape, dtype=np.uint16), bits_stored=12)
        labels = {f: float(rng.integers(0, 2)) if rng.random() > 0.15 else np.nan for f in findings}
        rows.append({"image_id": f"img{i:04d}", "patient_id": f"pat{i // 2:04d}", "study_id": None,
                     "path": rel, "view": "PA", "split": ("train", "val", "test")[(i // 2) % 3],
                     "dataset": "csv", "sex": "F", "age": 40.0 + i, **labels})
    index = root / "index.parquet"
    write_index(pd.DataFrame(rows), index, list(findings))
    return index


@pytest.fixture
def dicom_writer():
    """``write(path, pixels, photometric=..., bits_stored=..., **tags)``: see :func:`write_dicom`."""
    return write_dicom


@pytest.fixture(scope="session")
def image_dataset_factory():
    """``factory(root, n=12, ...) -> index path``: see :func:`write_image_dataset`."""
    return write_image_dataset


class FakeHub:
    """A Hugging Face hub cache under ``tmp_path``, laid out as huggingface_hub writes it:
    ``models--ORG--NAME/refs/main`` -> commit, ``snapshots/<commit>/<file>`` -> ``../../blobs/<id>``."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def put(self, repo: str, files: dict, revision: str = "c0ffee" * 6 + "abcd") -> Path:
        """Add ``{filename: source path or bytes}`` to ``repo``; returns the snapshot folder."""
        import hashlib
        import shutil

        base = self.cache / ("models--" + repo.replace("/", "--"))
        snapshot = base / "snapshots" / revision
        (base / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        (base / "refs").mkdir(exist_ok=True)
        (base / "refs" / "main").write_text(revision)
        for name, src in files.items():
            blob = base / "blobs" / hashlib.sha256(f"{repo}/{name}/{revision}".encode()).hexdigest()
            if isinstance(src, bytes):
                blob.write_bytes(src)
            else:
                try:
                    os.link(src, blob)  # big weight files: no copy
                except OSError:
                    shutil.copyfile(src, blob)
            target = snapshot / name
            try:
                target.symlink_to(os.path.relpath(blob, target.parent))
            except OSError:
                shutil.copyfile(blob, target)
        return snapshot


@pytest.fixture
def offline_weights(tmp_path, monkeypatch) -> FakeHub:
    """Weights strictly offline: HF cache and CXRBENCH_HOME under tmp_path, HF_HUB_OFFLINE=1, and every
    download entry point (huggingface_hub, timm, torch.hub) replaced by one that fails the test."""
    import huggingface_hub
    import timm.models._builder as timm_builder
    import timm.models._hub as timm_hub
    import torch.hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("CXRBENCH_HOME", str(tmp_path / "cxrbench-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(timm_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm_builder, "download_cached_file", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return FakeHub(tmp_path / "hf-hub")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run trained once per session on a tiny cache (random-vit-test, 32 px, 4 epochs): (run, cache)."""
    import torch

    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    cache = write_tiny_cache(root / "cache", n_patients=80)
    cfg = TrainConfig(cache=str(cache), init="random-vit-test", out=str(root / "run"), epochs=4, batch_size=8,
                      lr=1e-3, workers=0, log_every=1, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    try:
        train(cfg, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return root / "run", cache


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest on one thread, and a shared 2-core machine stays usable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
