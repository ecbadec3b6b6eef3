"""Image encoders for the phantom formats: bytes out, deterministic (no timestamps, seeded UIDs)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SOP_CLASS_CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SOP_CLASS_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255] (rounded)."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """Histogram equalization of a uint8 image, as OpenCV's ``equalizeHist`` does it."""
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    nonzero = cdf[cdf > 0]
    cdf_min = int(nonzero[0]) if len(nonzero) else 0
    total = int(cdf[-1])
    if total == cdf_min:  # constant image
        return img.copy()
    lut = np.rint((cdf - cdf_min) * 255.0 / (total - cdf_min))
    return np.clip(lut, 0, 255).astype(np.uint8)[img]


def png8(img: np.ndarray, rgba: bool = False) -> bytes:
    """8-bit grayscale PNG (or RGBA with equal channels and opaque alpha, a real NIH quirk)."""
    arr = to_uint8(img)
    if rgba:
        arr = np.dstack([arr, arr, arr, np.full_like(arr, 255)])  # (H, W, 4) -> RGBA
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png16(values: np.ndarray) -> bytes:
    """16-bit grayscale PNG of integer ``values`` (uint16)."""
    arr = np.ascontiguousarray(values, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img_u8: np.ndarray, quality: int = 95) -> bytes:
    """Baseline grayscale JPEG of a uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img_u8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def dicom(
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str,
    modality: str,
    uid_seed: str,
    patient_id: str,
    sex: str | None = None,
    age_years: float | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """A DICOM Part-10 file (explicit VR little endian) holding ``stored`` as raw pixel values.

    stored: uint16 (H, W), already inverted for MONOCHROME1 and already in [0, 2**bits_stored - 1];
    rescale: (slope, intercept) of the modality LUT; window: (center, width) of the VOI LUT.
    UIDs derive from ``uid_seed``, so the same call gives the same bytes.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = SOP_CLASS_CR if modality == "CR" else SOP_CLASS_DX
    sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = modality
    ds.PatientID = patient_id
    if sex:
        ds.PatientSex = sex
    if age_years is not None:
        ds.PatientAge = f"{int(age_years):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = ["0.143", "0.143"]
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleIntercept = f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.1f}"
        ds.WindowWidth = f"{window[1]:.1f}"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
