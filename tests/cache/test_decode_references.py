"""The decoder against the reference readers (pydicom, OpenCV, Pillow) on the two cases of issue 21:
16-bit PNGs with sBIT 12 (spec-scaled and unscaled, dark and bright) and 12-bit JPEG Extended DICOM,
with the ``dicom`` extra's codec and without it (hidden in a child process)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from cxrbench.cache.decode import read_image, spec_scaled
from cxrbench.common.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def _png16(arr: np.ndarray, sbit: int | None) -> bytes:
    """A grey 16-bit PNG, with an sBIT chunk when ``sbit`` is given."""
    h, w = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
    body = (chunk(b"sBIT", bytes([sbit])) if sbit else b"") + chunk(b"IDAT", zlib.compress(raw))
    return head + body + chunk(b"IEND", b"")


def _radiograph12(real_cxr_dir: Path, top: int) -> np.ndarray:
    """A real radiograph as 12-bit detector values up to ``top``, with sensor noise in the low bits."""
    from PIL import Image

    img = Image.open(real_cxr_dir / "00000001_000.png").convert("L").resize((256, 256))
    img = np.asarray(img, np.float64)
    noise = np.random.default_rng(0).integers(0, 16, img.shape)
    return np.clip(np.rint(img / 255 * (top - 15)) + noise, 0, 4095).astype(np.uint16)


SCALINGS = {  # the PNG specification's ways of scaling a 12-bit value v to 16 bits (section 12.4)
    "shifted": lambda v: v << 4,
    "left-bit-replication": lambda v: (v << 4) | (v >> 8),
    "linear": lambda v: np.floor(v * (65535 / 4095) + 0.5).astype(np.uint16),
}


def _pydicom_reading(v: np.ndarray, tmp_path: Path, dicom_writer) -> np.ndarray:
    """pydicom's values of the same 12-bit data stored in a DICOM (Bits Stored 12), over 4095."""
    import pydicom

    path = dicom_writer(tmp_path / "same.dcm", v, bits_stored=12)
    return pydicom.dcmread(path).pixel_array.astype(np.float64) / 4095


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("top", [255, 1023, 4095])  # dark (max 255: the case that came out 16x too bright)
def test_spec_scaled_sbit12_matches_pydicom_and_opencv(real_cxr_dir, tmp_path, dicom_writer, scaling, top):
    import cv2

    v = _radiograph12(real_cxr_dir, top)
    stored = SCALINGS[scaling](v)
    path = tmp_path / "scaled.png"
    path.write_bytes(_png16(stored, 12))
    ours = read_image(path).astype(np.float64)
    samples = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # OpenCV's samples: the stored 16-bit words
    assert np.array_equal(samples, stored)
    assert spec_scaled(samples, 12)
    assert np.max(np.abs(ours - (samples >> 4) / 4095)) < 1e-6  # the spec's reading of OpenCV's samples
    assert np.max(np.abs(ours - _pydicom_reading(v, tmp_path, dicom_writer))) < 1e-6


@pytest.mark.parametrize("sbit", [12, None])  # a writer that sets sBIT without scaling; PadChest (none)
@pytest.mark.parametrize("top", [255, 1023, 4095])
def test_unscaled_12bit_values_match_pydicom_and_pillow(real_cxr_dir, tmp_path, dicom_writer, sbit, top):
    from PIL import Image

    v = _radiograph12(real_cxr_dir, top)
    path = tmp_path / "unscaled.png"
    path.write_bytes(_png16(v, sbit))
    ours = read_image(path).astype(np.float64)
    samples = np.asarray(Image.open(path))  # Pillow's samples: the stored values themselves
    assert np.array_equal(samples, v) and not spec_scaled(v, 12)
    if sbit is None and top < 4095:  # no sBIT: the standard-depth rule (documented) picks the scale
        bits = 8 if top <= 255 else 10
        assert np.max(np.abs(ours - samples / (2**bits - 1))) < 1e-6
        return
    assert np.max(np.abs(ours - samples / 4095)) < 1e-6
    assert np.max(np.abs(ours - _pydicom_reading(v, tmp_path, dicom_writer))) < 1e-6


def test_the_decision_ignores_brightness():
    """The same dark image, scaled and unscaled: the bits decide, not the maximum."""
    v = np.arange(0, 256, dtype=np.uint16).reshape(16, 16) * 1 + 3  # dark, odd low bits
    assert not spec_scaled(v, 12)
    for scale in SCALINGS.values():
        assert spec_scaled(scale(v), 12)
    assert spec_scaled(np.zeros((4, 4), np.uint16), 12)


# -- 12-bit JPEG Extended DICOM ------------------------------------------------------------------------
def _jpeg_extended(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(path)


HIDE_EXTRA = """
import importlib.abc, json, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pylibjpeg", "libjpeg", "openjpeg"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
from cxrbench.cache.decode import read_image
from cxrbench.common.errors import InputError
try:
    img = read_image(sys.argv[1])
    print(json.dumps({"ok": True}))
except InputError as e:
    print(json.dumps({"ok": False, "error": e.one_line()}))
"""


def _without_extra(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", HIDE_EXTRA, str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_12bit_jpeg_extended_without_the_extra_names_it():
    """Pillow's plugin loads for JPEG Extended but decodes 8-bit samples only: not a damaged file."""
    result = _without_extra(_jpeg_extended("JPGExtended.dcm"))
    assert not result["ok"]
    assert "pip install 'cxrbench[dicom]'" in result["error"] and "12-bit JPEG Extended" in result["error"]
    assert "damaged" not in result["error"].split("Fix:")[0]


def test_12bit_jpeg_extended_with_the_extra_matches_pydicom():
    pytest.importorskip("pylibjpeg")
    pytest.importorskip("libjpeg")
    import pydicom

    path = _jpeg_extended("JPGExtended.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51" and ds.BitsStored == 12
    reference = ds.pixel_array.astype(np.float64) / 4095  # no window, no rescale: the stored range
    assert np.max(np.abs(read_image(path) - reference)) < 1e-6


def test_a_12bit_jpeg_the_extra_cannot_read_is_not_an_install_hint():
    """pydicom's JPEG-lossy.dcm defeats pylibjpeg too (GDCM reads it): with the extra installed the
    message must not send the user to install it again."""
    pytest.importorskip("pylibjpeg")
    with pytest.raises(InputError) as err:
        read_image(_jpeg_extended("JPEG-lossy.dcm"))
    assert "pip install" not in err.value.one_line() and "GDCM" in err.value.one_line()
