"""Decode a radiograph file (PNG 8/16-bit, JPEG, DICOM) to a float32 gray image in [0, 1].

Conventions (every reader gives the same meaning to the same value):

* **Output**: ``float32 (H, W)``, 0 = black, 1 = white (bone bright, as displayed).
* **Format** is sniffed from the bytes, not the file name: ``DICM`` at offset 128 is DICOM; files
  named ``.dcm``/``.dicom`` without that preamble are tried as DICOM too; the PNG and JPEG
  signatures select Pillow (other formats Pillow recognises, e.g. TIFF/BMP, are read the same way).
* **8-bit PNG/JPEG**: value / 255.
* **16-bit PNG** (grey, grey+alpha, RGB, RGBA: all kept at 16 bits; colour and alpha PNGs are read
  with OpenCV, as Pillow would cut them to 8 bits): with an ``sBIT`` chunk of b significant bits,
  scaled or unscaled is decided by the low ``16 - b`` bits of the samples, never by brightness
  (:func:`spec_scaled`): when every sample carries exactly what one of the PNG specification's
  scalings puts there (zeros, left bit replication or linear scaling), the significant bits are the
  high bits and the reading is ``(v >> (16 - b)) / (2**b - 1)``; otherwise the samples are stored
  unscaled (detector noise in the low bits, against the specification) and the reading is
  ``v / (2**b - 1)``, unless values above ``2**b - 1`` show that the sBIT is wrong (then as without
  sBIT). Without sBIT: ``v / (2**b - 1)`` for the smallest of 8, 10, 12, 14, 16 bits that holds the
  image's maximum. PadChest stores 10- or
  12-bit detector values unscaled in 16-bit PNGs without sBIT (maxima far below 65535), so a fixed
  65535 divisor would leave them nearly black; the standard-depth rule keeps the scale fixed for all
  images of one bit depth (a 12-bit image maps by /4095 whether its brightest pixel is 3000 or 4095).
* **JPEG EXIF orientation** is applied (the image as displayed, as ``cv2.imread`` does).
* **Colour** (RGB/RGBA/palette/CMYK): ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` in float
  (identical to any channel for the usual gray-saved-as-RGB radiograph); alpha is ignored.
* **DICOM** (pydicom): first the Modality LUT (Modality LUT Sequence or Rescale Slope/Intercept),
  then the VOI transform when present: the first VOI LUT Sequence item (scaled by the LUT's own
  output range), else the first Window Center/Width pair with its VOI LUT Function (LINEAR,
  LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2), which maps straight onto [0, 1]. Without a VOI transform
  the stored-value range from Bits Stored and Pixel Representation (through the rescale) maps onto
  [0, 1] (pydicom masks the stored values to Bits Stored, as the standard says). ``MONOCHROME1``
  is inverted last (``1 - x``). Multi-frame files are refused.
* **Errors**: a missing, empty, truncated, corrupt or unsupported file, or a DICOM header value that
  cannot be read (e.g. ``NumberOfFrames = '1A'``), raises ``InputError`` naming the file and the
  reason; a compressed DICOM the installed codecs cannot decode names the ``dicom`` extra while its
  codec (pylibjpeg) is missing, even when another plugin loads (Pillow's loads for JPEG Extended but
  decodes 8-bit samples only, so 12-bit lossy CR/DX files need the extra), and calls the data
  damaged only when the extra's codec is installed and fails too.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from cxrbench.common.errors import InputError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_STANDARD_DEPTHS = (8, 10, 12, 14, 16)
_LUMA = (0.299, 0.587, 0.114)
_EXIF_ORIENTATION = 0x0112
DICOM_EXTRA = "cxrbench[dicom]"  # the extra with the codecs of compressed DICOM (pyproject.toml)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a radiograph as ``float32 (H, W)`` in [0, 1] (1 = white); see the module docstring."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("image file not found", where=str(path), fix="check the path") from None
    except IsADirectoryError:
        raise InputError("expected an image file, found a directory", where=str(path),
                         fix="check the path") from None
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror or e})", where=str(path),
                         fix="check the file's permissions") from None
    if not data:
        raise InputError("the file is empty (0 bytes)", where=str(path),
                         fix="re-download or remove the image")
    if is_dicom(data, path):
        img = _read_dicom(data, path)
    else:
        img = _read_pillow(data, path)
    if not np.isfinite(img).all():
        raise InputError("decoded image contains NaN or infinite values", where=str(path),
                         fix="the file is damaged; re-export it")
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0, out=img), dtype=np.float32)


def is_dicom(data: bytes, path: str | os.PathLike = "") -> bool:
    """True for the ``DICM`` preamble magic, or a DICOM file name without another known signature."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    known = data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)
    return not known and Path(path).suffix.lower() in _DICOM_SUFFIXES


# -- PNG / JPEG / other Pillow formats ----------------------------------------------------------------
def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None for another format."""
    if not data.startswith(_PNG_MAGIC) or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    return int(data[24]), int(data[25])


def _read_png16_colour(data: bytes, path: Path) -> np.ndarray:
    """A 16-bit grey+alpha, RGB or RGBA PNG at full precision (OpenCV; alpha ignored)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise InputError("corrupt or truncated 16-bit PNG", where=str(path),
                         fix="re-download or remove the image")
    if arr.ndim == 2:
        return _scale_uint(arr, _png_sbit(data), path)
    if arr.shape[-1] == 2:  # grey + alpha
        return _scale_uint(np.ascontiguousarray(arr[..., 0]), _png_sbit(data), path)
    bgr = arr[..., :3]
    scaled = _scale_uint(bgr, _png_sbit(data), path)  # one scale for the three channels
    return _luminance(scaled[..., ::-1])


def _read_pillow(data: bytes, path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    header = _png_header(data)
    if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
        return _read_png16_colour(data, path)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()  # decode now: truncated/corrupt data raises here, not later
    except UnidentifiedImageError:
        raise InputError("not a recognised image (expected PNG, JPEG or DICOM)", where=str(path),
                         fix="check that the file is an image and not damaged") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image is implausibly large ({e})", where=str(path),
                         fix="check the file; radiographs are at most a few thousand pixels wide") from None
    except Exception as e:  # decoder errors of any type mean a damaged file
        raise InputError(f"corrupt or truncated image ({_reason(e)})", where=str(path),
                         fix="re-download or remove the image") from None
    if im.format == "JPEG" and im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        from PIL import ImageOps

        im = ImageOps.exif_transpose(im)  # as displayed (cv2.imread does the same)
    mode = im.mode
    if mode in ("L", "LA"):
        return _scale_uint(np.asarray(im.getchannel(0) if mode == "LA" else im), 8, path)
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(f"32-bit integer image with values {arr.min()}..{arr.max()}", where=str(path),
                             fix="store radiographs as 8- or 16-bit PNG")
        return _scale_uint(arr.astype(np.uint16, copy=False), _png_sbit(data), path)
    if mode == "F":
        raise InputError("floating-point image files are not supported", where=str(path),
                         fix="store radiographs as 8- or 16-bit PNG, JPEG or DICOM")
    try:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    except Exception as e:
        raise InputError(f"cannot convert image mode {mode!r} to gray ({_reason(e)})", where=str(path),
                         fix="store radiographs as gray PNG or JPEG") from None
    return _luminance(rgb) / 255.0


def _png_sbit(data: bytes) -> int | None:
    """Significant bits from a PNG's sBIT chunk (max over colour channels), or None."""
    if not data.startswith(_PNG_MAGIC):
        return None
    pos = len(_PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"sBIT":
            payload = data[pos + 8 : pos + 8 + length]
            color_type = data[25] if len(data) > 25 else 0
            # gray: 1 byte; gray+alpha: 2 (last is alpha); RGB: 3; RGBA: 4 (last is alpha)
            n_colour = {0: 1, 4: 1, 2: 3, 6: 3, 3: 3}.get(color_type, 1)
            bits = max(payload[:n_colour]) if payload else 0
            return int(bits) if 1 <= bits <= 16 else None
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _scale_uint(arr: np.ndarray, bits: int | None, path: Path) -> np.ndarray:
    """Unsigned integers -> [0, 1] (see the module docstring): ``bits`` is the PNG sBIT (None: none)."""
    top = int(arr.max()) if arr.size else 0
    depth = arr.dtype.itemsize * 8
    if bits is not None and bits < depth and spec_scaled(arr, bits):
        # the significant bits are the high bits of each sample (the PNG specification's scaling)
        arr = arr >> np.asarray(depth - bits, dtype=arr.dtype)
    elif bits is None or top > (1 << bits) - 1:
        bits = standard_bit_depth(top)  # no sBIT, or one the data contradict
    return arr.astype(np.float32) / np.float32((1 << bits) - 1)  # correctly rounded k / (2**b - 1)


def spec_scaled(arr: np.ndarray, bits: int) -> bool:
    """True when every sample's low ``depth - bits`` bits are exactly what one of the PNG
    specification's ways of scaling a ``bits``-bit value to the full depth puts there (section 12.4,
    "Sample depth scaling"): zeros (shifting), the value's own high bits again (left bit
    replication), or ``round(v * (2**depth - 1) / (2**bits - 1))`` (linear scaling).

    Samples stored unscaled (PadChest's convention, and writers that set sBIT but do not scale) are
    detector values whose low bits are noise: they fail all three tests on any real image. The test
    looks at bit patterns only, never at how bright the image is, so a dark spec-scaled file is not
    mistaken for an unscaled one. An image whose samples all pass (also one that is entirely 0) is
    read as scaled, which is what its sBIT says.
    """
    depth = arr.dtype.itemsize * 8
    shift = depth - bits
    if shift <= 0 or arr.size == 0:
        return False
    high = arr >> np.asarray(shift, dtype=arr.dtype)
    low = arr & np.asarray((1 << shift) - 1, dtype=arr.dtype)
    if not low.any():
        return True  # shifted
    replicated = high << np.asarray(shift, dtype=arr.dtype)
    remaining = shift
    while remaining > 0:  # fill the low bits with copies of the value, from its top bit down
        step = min(bits, remaining)
        replicated |= (high >> np.asarray(bits - step, dtype=arr.dtype)) << np.asarray(remaining - step,
                                                                                       dtype=arr.dtype)
        remaining -= step
    if np.array_equal(replicated, arr):
        return True
    linear = np.floor(high * (((1 << depth) - 1) / ((1 << bits) - 1)) + 0.5)
    return bool(np.array_equal(linear, arr))


def standard_bit_depth(max_value: float) -> int:
    """The smallest of 8, 10, 12, 14, 16 bits whose range holds ``max_value``."""
    for bits in _STANDARD_DEPTHS:
        if max_value <= (1 << bits) - 1:
            return bits
    return int(np.ceil(np.log2(max_value + 1)))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i] for i in range(3))
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).astype(np.float32)


# -- DICOM ------------------------------------------------------------------------------------------
def _read_dicom(data: bytes, path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except InvalidDicomError as e:
        raise InputError(f"not a valid DICOM file ({_reason(e)})", where=str(path),
                         fix="re-download or remove the image") from None
    except Exception as e:
        raise InputError(f"corrupt or truncated DICOM header ({_reason(e)})", where=str(path),
                         fix="re-download or remove the image") from None
    try:
        return _dicom_pixels(ds, path)
    except InputError:
        raise
    except Exception as e:  # a header value pydicom cannot convert (e.g. NumberOfFrames '1A')
        raise InputError(f"malformed DICOM header or pixel data ({_reason(e)})", where=str(path),
                         fix="the file is damaged or not standard; re-export it, or pass --skip-bad",
                         ) from None


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise InputError("DICOM file has no pixel data", where=str(path),
                         fix="this is not an image object (e.g. a report or a structured document)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"multi-frame DICOM ({frames} frames)", where=str(path),
                         fix="a chest radiograph is a single frame; extract the frame you want")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        raw = ds.pixel_array
    except Exception as e:  # missing codec, truncated pixel data, bad header values
        raise _pixel_error(ds, path, e) from None
    if raw.ndim == 3:
        if raw.shape[-1] not in (3, 4):
            raise InputError(f"unexpected DICOM pixel array shape {raw.shape}", where=str(path),
                             fix="a chest radiograph is one gray (or RGB) frame")
        # colour DICOM (secondary capture); pydicom returns RGB for YBR by default
        rgb = raw[..., :3].astype(np.float32)
        return _luminance(rgb) / float(max(1, (1 << int(ds.get("BitsStored", 8))) - 1))
    if raw.ndim != 2:
        raise InputError(f"unexpected DICOM pixel array shape {raw.shape}", where=str(path),
                         fix="a chest radiograph is one gray frame")
    try:
        img = _dicom_gray(raw, ds)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"invalid DICOM LUT or window values ({_reason(e)})", where=str(path),
                         fix="check the file's Modality/VOI LUT attributes") from None
    if photometric == "MONOCHROME1":
        img = 1.0 - img
    elif photometric not in ("MONOCHROME2", ""):
        raise InputError(f"unsupported Photometric Interpretation {photometric!r}", where=str(path),
                         fix="expected MONOCHROME1, MONOCHROME2 or RGB")
    return img.astype(np.float32, copy=False)


def _pixel_error(ds, path: Path, err: Exception) -> InputError:
    """Why pixel data failed: a codec that is missing (named, with the install line), or data the
    installed codecs cannot decode (damaged): never advice to install what is already there."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and getattr(syntax, "is_compressed", False):
        try:
            from pydicom.pixels import get_decoder

            decoder = get_decoder(syntax)
            available = bool(decoder.is_available)
        except Exception:  # an unknown transfer syntax: no decoder at all
            decoder, available = None, False
        bits = ds.get("BitsStored")
        what = f"{bits}-bit {syntax.name}" if bits else syntax.name
        if not available:
            return InputError(f"no installed codec decodes {what} ({_reason(err)})", where=str(path),
                              fix=f"pip install {DICOM_EXTRA!r} (pylibjpeg with its libjpeg and openjpeg "
                                  "plugins), or gdcm")
        # A codec that loads is not proof: Pillow's plugin is available for JPEG Extended but decodes
        # 8-bit samples only. While the extra's codec (pylibjpeg) is missing, it is what to install.
        installed = ", ".join(getattr(decoder, "available_plugins", ()) or ())
        if any(str(m).startswith("pylibjpeg") for m in getattr(decoder, "missing_dependencies", ()) or ()):
            return InputError(f"the installed codecs ({installed or 'none'}) cannot decode this {what} "
                              f"pixel data ({_reason(err)})", where=str(path),
                              fix=f"pip install {DICOM_EXTRA!r}: its pylibjpeg decodes 12- and 16-bit JPEG, "
                                  "JPEG-LS and JPEG 2000")
        return InputError(f"the {what} pixel data cannot be decoded by the installed codecs "
                          f"({installed or 'none'}: {_reason(err)})", where=str(path),
                          fix="the file's compressed data are damaged, or in a variant these codecs do not "
                              "read (GDCM may); re-export it, or pass --skip-bad")
    return InputError(f"cannot decode DICOM pixel data ({_reason(err)})", where=str(path),
                      fix="the file is damaged (pixel data shorter than its header says?); re-export it")


def _dicom_gray(raw: np.ndarray, ds) -> np.ndarray:
    """Modality LUT then VOI (LUT or window) -> [0, 1]; stored range when there is no VOI."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    bits = int(ds.get("BitsStored", raw.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    values = apply_modality_lut(raw, ds).astype(np.float64, copy=False)
    if "ModalityLUTSequence" in ds:
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0, (1 << lut_bits) - 1
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        n_entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        n_entries = n_entries or 65536
        domain = np.arange(first, first + n_entries)
        lut_out = apply_voi(domain, ds).astype(np.float64)
        out_lo, out_hi = float(lut_out.min()), float(lut_out.max())
        mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        return (mapped - out_lo) / max(out_hi - out_lo, 1e-12)

    window = _first_window(ds)
    if window is not None:
        center, width = window
        func = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        if func == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if func == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width <= 1.0:  # LINEAR with width 1 is a threshold (PS3.3 C.11.2.1.2.1)
            return (values > center - 0.5).astype(np.float64)
        return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)

    # pydicom masks stored values to Bits Stored, so they always lie in [lo, hi]
    return (values - lo) / max(hi - lo, 1e-12)


def _first_window(ds) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0:
        return None  # an invalid window is ignored: the stored range is used instead
    return c, w


def _is_multi(value) -> bool:
    return not isinstance(value, str | bytes | int | float) and hasattr(value, "__getitem__")


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
