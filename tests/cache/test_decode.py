"""Decoder: real radiographs, every format's value convention, and every way a file can be bad."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbench.cache.decode import is_dicom, read_image, standard_bit_depth
from cxrbench.common.errors import InputError

SIIM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _check_gray(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.float32 and img.shape == shape and img.flags.c_contiguous
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img.std() > 0.05  # a radiograph, not a blank


# -- real files -------------------------------------------------------------------------------------
def test_real_nih_pngs_are_8bit_gray(real_cxr_dir: Path):
    for name in ("00000001_000.png", "00027426_000.png"):
        img = read_image(real_cxr_dir / name)
        _check_gray(img, (512, 512))
        raw = np.asarray(Image.open(real_cxr_dir / name))
        np.testing.assert_array_equal(img, raw.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("name,shape", [("16747_3_1.jpg", (885, 1036)), ("h0001.png", (512, 512)),
                                        ("tb0005.png", (512, 512))])
def test_real_rgb_files_become_gray(real_cxr_dir: Path, name: str, shape):
    img = read_image(real_cxr_dir / name)
    _check_gray(img, shape)
    rgb = np.asarray(Image.open(real_cxr_dir / name).convert("RGB"), dtype=np.float64) / 255
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(img, luma, atol=1e-5)


def test_real_monochrome1_is_the_inverse_of_its_twin(real_cxr_dir: Path):
    mono2 = read_image(real_cxr_dir / SIIM)
    mono1 = read_image(real_cxr_dir / "Fake_MONOHR1.dcm")
    _check_gray(mono2, (1024, 1024))
    _check_gray(mono1, (1024, 1024))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # lungs are dark on a correctly displayed radiograph: the image centre-left is darker than the mean
    assert mono2[300:700, 200:450].mean() < mono2.mean()


def test_dicom_is_sniffed_by_content_not_name(real_cxr_dir: Path, tmp_path: Path):
    no_ext = tmp_path / "IM0001"
    shutil.copy(real_cxr_dir / SIIM, no_ext)
    assert is_dicom(no_ext.read_bytes(), no_ext)
    np.testing.assert_array_equal(read_image(no_ext), read_image(real_cxr_dir / SIIM))
    png_named_dcm = tmp_path / "really_a_png.dcm"
    shutil.copy(real_cxr_dir / "00000001_000.png", png_named_dcm)
    np.testing.assert_array_equal(read_image(png_named_dcm), read_image(real_cxr_dir / "00000001_000.png"))


# -- PNG bit depths ---------------------------------------------------------------------------------
def _add_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk after IHDR (8 + 25 bytes)."""
    chunk = b"sBIT" + bytes([bits])
    return png[:33] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


@pytest.mark.parametrize("top,bits", [(255, 8), (1000, 10), (4095, 12), (3000, 12), (16383, 14), (40000, 16)])
def test_16bit_png_scales_by_standard_depth(tmp_path: Path, top: int, bits: int):
    arr = np.linspace(0, top, 64 * 32).reshape(64, 32).round().astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    img = read_image(tmp_path / "x.png")
    np.testing.assert_allclose(img, arr / (2**bits - 1), rtol=1e-6)
    assert standard_bit_depth(top) == bits


def test_16bit_png_honours_sbit(tmp_path: Path):
    arr = np.linspace(0, 1000, 64 * 32).reshape(64, 32).round().astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    path = tmp_path / "sbit.png"
    path.write_bytes(_add_sbit((tmp_path / "x.png").read_bytes(), 12))
    np.testing.assert_allclose(read_image(path), arr / 4095, rtol=1e-6)  # not /1023


def test_rgba_ignores_alpha_and_palette_is_gray(tmp_path: Path):
    gray = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.zeros_like(gray)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), gray / 255, atol=1e-6)
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), gray / 255, atol=1e-6)


# -- DICOM value pipeline -----------------------------------------------------------------------------
def _ramp(top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, 32 * 16).reshape(32, 16).round().astype(np.uint16)


def test_dicom_bits_stored_range_and_monochrome1(tmp_path: Path, dicom_writer):
    raw = _ramp(1000)  # a dark 12-bit image: Bits Stored, not the data maximum, sets the scale
    m2 = read_image(dicom_writer(tmp_path / "m2.dcm", raw, bits_stored=12))
    m1 = read_image(dicom_writer(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_allclose(m2, raw / 4095, atol=1e-6)
    np.testing.assert_allclose(m1, 1 - raw / 4095, atol=1e-6)


def test_dicom_rescale_then_window_in_modality_units(tmp_path: Path, dicom_writer):
    raw = _ramp()
    hu = raw * 2.0 - 1024.0
    center, width = 1000.0, 2000.0
    img = read_image(dicom_writer(tmp_path / "w.dcm", raw, bits_stored=12, RescaleSlope=2,
                                  RescaleIntercept=-1024, WindowCenter=center, WindowWidth=width))
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert (img == 0).any() and (img == 1).any()  # the window really clips


def test_dicom_rescale_without_window_keeps_relative_values(tmp_path: Path, dicom_writer):
    raw = _ramp()
    img = read_image(dicom_writer(tmp_path / "r.dcm", raw, bits_stored=12, RescaleSlope=2,
                                  RescaleIntercept=-1024))
    np.testing.assert_allclose(img, raw / 4095, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_dicom_voi_lut_functions(tmp_path: Path, dicom_writer, function: str):
    raw = _ramp()
    center, width = 2048.0, 1024.0
    img = read_image(dicom_writer(tmp_path / "f.dcm", raw, bits_stored=12, WindowCenter=center,
                                  WindowWidth=width, VOILUTFunction=function))
    x = raw.astype(np.float64)
    expected = (np.clip((x - center) / width + 0.5, 0, 1) if function == "LINEAR_EXACT"
                else 1 / (1 + np.exp(-4 * (x - center) / width)))
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_dicom_multiple_windows_use_the_first_and_monochrome1_inverts_after(tmp_path: Path, dicom_writer):
    raw = _ramp()
    img = read_image(dicom_writer(tmp_path / "mw.dcm", raw, photometric="MONOCHROME1", bits_stored=12,
                                  WindowCenter=[1500, 3000], WindowWidth=[1000, 400]))
    expected = 1 - np.clip((raw - 1499.5) / 999 + 0.5, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path: Path, dicom_writer):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = _ramp(255).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    lut = (np.sqrt(np.arange(256) / 255) * 1000 + 100).round().astype(np.uint16)  # range 100..1100
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data as US values
    img = read_image(dicom_writer(tmp_path / "lut.dcm", raw, bits_stored=8, VOILUTSequence=Sequence([item])))
    np.testing.assert_allclose(img, (lut[raw] - 100) / 1000, atol=1e-6)


# -- bad files --------------------------------------------------------------------------------------
def _error(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in info.value.one_line()
    return info.value


def test_missing_empty_and_directory(tmp_path: Path):
    assert "not found" in _error(tmp_path / "nope.png").what
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.png").what
    (tmp_path / "dir.png").mkdir()
    assert "directory" in _error(tmp_path / "dir.png").what


def test_truncated_and_garbage_files(tmp_path: Path, real_cxr_dir: Path):
    for name in ("00000001_000.png", "16747_3_1.jpg"):
        data = (real_cxr_dir / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        assert "truncated" in _error(cut).what
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image" * 20)
    assert "not a recognised image" in _error(garbage).what


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_bad_dicoms(tmp_path: Path, real_cxr_dir: Path, dicom_writer):
    data = (real_cxr_dir / SIIM).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 40_000])
    assert "DICOM" in _error(cut).what
    header_only = tmp_path / "garbage.dcm"
    header_only.write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02" * 10)
    _error(header_only)
    frames = np.zeros((2, 8, 8), dtype=np.uint16)
    multi = dicom_writer(tmp_path / "multi.dcm", frames.reshape(16, 8), bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(multi)
    ds.Rows, ds.NumberOfFrames = 8, 2
    ds.save_as(multi)
    assert "multi-frame" in _error(multi).what
    palette = dicom_writer(tmp_path / "pal.dcm", np.zeros((8, 8), dtype=np.uint8),
                           photometric="PALETTE COLOR")
    assert "Photometric" in _error(palette).what


def test_jpeg_exif_orientation_is_applied(tmp_path: Path):
    gray = np.zeros((20, 40), np.uint8)
    gray[:, :10] = 255  # bright on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(gray).save(tmp_path / "o.jpg", exif=exif, quality=100)
    img = read_image(tmp_path / "o.jpg")
    assert img.shape == (40, 20)
    assert img[:10].mean() > 0.9 and img[20:].mean() < 0.1  # the left edge is now on top


def _png(arr: np.ndarray, colour_type: int, sbit: bytes | None = None) -> bytes:
    """A PNG written by hand (16-bit grey+alpha has no writer in Pillow or OpenCV)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    body = (chunk(b"sBIT", sbit) if sbit else b"") + chunk(b"IDAT", zlib.compress(raw))
    return head + body + chunk(b"IEND", b"")


def test_spec_scaled_sbit_keeps_the_brightness(tmp_path: Path):
    """sBIT 12 with the samples scaled to 16 bits (the PNG specification): significant bits are the
    high bits, so the image is v >> 4 over 4095, not 16x too bright."""
    arr12 = np.linspace(0, 4095, 64 * 32).reshape(64, 32).round().astype(np.uint16)
    path = tmp_path / "scaled.png"
    path.write_bytes(_png(arr12 << 4, 0, sbit=bytes([12])))
    np.testing.assert_allclose(read_image(path), arr12 / 4095, rtol=1e-6)
    from cxrbench.cache.preprocess import preprocess

    assert abs(int(preprocess(read_image(path), 32, equalize=False).mean()) - 127) <= 2


def test_16bit_colour_and_grey_alpha_keep_16_bits(tmp_path: Path):
    import cv2

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65536, (16, 24), dtype=np.uint16)
    (tmp_path / "ga.png").write_bytes(_png(np.dstack([grey, np.full_like(grey, 65535)]), 4))
    np.testing.assert_allclose(read_image(tmp_path / "ga.png"), grey / 65535, rtol=1e-6)
    rgb = rng.integers(0, 65536, (16, 24, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])  # OpenCV writes BGR
    lum = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 65535
    got = read_image(tmp_path / "rgb.png")
    np.testing.assert_allclose(got, lum, atol=1e-6)
    assert len(np.unique(np.round(got * 65535))) > 256  # more levels than an 8-bit read could give


def _malformed_frames(path: Path, dicom_writer) -> Path:
    """A DICOM whose NumberOfFrames (IS) reads '1A' (pydicom refuses to write it, so patch the bytes)."""
    dicom_writer(path, _ramp(), NumberOfFrames="11")
    data = path.read_bytes()
    tag = b"\x28\x00\x08\x00IS\x02\x0011"
    assert data.count(tag) == 1
    path.write_bytes(data.replace(tag, tag[:-2] + b"1A"))
    return path


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_a_malformed_dicom_header_is_a_named_failure(tmp_path: Path, dicom_writer):
    path = _malformed_frames(tmp_path / "bad.dcm", dicom_writer)
    with pytest.raises(InputError, match="malformed DICOM header"):
        read_image(path)


def test_one_odd_file_never_stops_prepare(tmp_path: Path, dicom_writer):
    """prepare --skip-bad completes with the odd file named in the failure list (it used to end in a
    traceback and build no cache)."""
    import pandas as pd

    from cxrbench.cache.build import prepare_cache

    root = tmp_path / "data"
    _malformed_frames(root / "bad.dcm", dicom_writer)
    dicom_writer(root / "good.dcm", _ramp())
    df = pd.DataFrame({"image_id": ["bad", "good"], "patient_id": ["p1", "p2"], "study_id": None,
                       "path": ["bad.dcm", "good.dcm"], "view": "PA", "split": ["train", "test"],
                       "dataset": "vindr", "sex": "F", "age": 50.0, "edema": np.array([1, 0], np.float32)})
    manifest = prepare_cache(df, root, tmp_path / "c", size=16, workers=1, quiet=True, skip_bad=True,
                             findings=["edema"])
    assert manifest["counts"]["images"] == 1 and manifest["failures"][0]["path"] == "bad.dcm"
    assert "malformed DICOM header" in manifest["failures"][0]["reason"]


def test_codec_errors_never_ask_to_install_what_is_installed(tmp_path: Path, dicom_writer, monkeypatch):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = dicom_writer(tmp_path / "j.dcm", _ramp(255).astype(np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not a real jpeg stream"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match="cannot be decoded by the installed codecs") as err:
        read_image(path)
    assert "pip install" not in str(err.value)

    class Missing:
        is_available = False

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda uid: Missing())
    with pytest.raises(InputError, match=r"no installed codec decodes .*cxrbench\[dicom\]"):
        read_image(path)
