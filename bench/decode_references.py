"""The two decoder cases of issue 21 against the reference readers: max |difference|.

1. 16-bit PNG with sBIT 12, built from a real radiograph as 12-bit values (dark: max 255, and full
   range: max 4095), stored spec-scaled (shifted, left bit replication, linear) and unscaled (sBIT
   12 without scaling; PadChest's layout without sBIT). cxrbench's reading is compared with pydicom's
   reading of the same 12-bit values in a DICOM (Bits Stored 12, over 4095) and with the
   specification's reading of OpenCV's and Pillow's raw samples. The "before" column is the rule of
   cxrbench before issue 21 (scaled only when the maximum exceeds 4095), recomputed here.
2. 12-bit JPEG Extended DICOM (pydicom's JPGExtended.dcm, a real 1.2.840.10008.1.2.4.51 file), with
   the ``dicom`` extra (pylibjpeg) and without it (pylibjpeg, libjpeg and openjpeg hidden from a
   child process): cxrbench vs pydicom's own decoding, or the message when it cannot decode.

  python bench/decode_references.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from cache.test_decode_references import HIDE_EXTRA, SCALINGS, _png16  # noqa: E402
from conftest import REAL_CXR_DIR, write_dicom  # noqa: E402
from cxrbench.cache.decode import read_image  # noqa: E402


def radiograph12(top: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(REAL_CXR_DIR / "00000001_000.png").convert("L").resize((512, 512))
    noise = np.random.default_rng(0).integers(0, 16, (512, 512))
    return np.clip(np.rint(np.asarray(img, np.float64) / 255 * (top - 15)) + noise, 0, 4095).astype(np.uint16)


def before_rule(samples: np.ndarray) -> np.ndarray:
    """cxrbench before issue 21 for sBIT 12: shifted only when the maximum exceeds 4095."""
    s = samples >> 4 if samples.max() > 4095 else samples
    return s.astype(np.float64) / 4095


def png_case(tmp: Path) -> None:
    import cv2
    import pydicom
    from PIL import Image

    print("1. 16-bit PNG, sBIT 12: max |cxrbench - reference| (before = the old brightness rule)")
    print(f"   {'layout':<34}{'max':>6}  {'vs pydicom':>11}  {'vs OpenCV':>10}  {'vs Pillow':>10}  "
          f"{'before vs pydicom':>17}")
    for top in (255, 4095):
        v = radiograph12(top)
        ref = pydicom.dcmread(write_dicom(tmp / f"v{top}.dcm", v, bits_stored=12)).pixel_array / 4095
        layouts = {f"spec-scaled ({k})": (f(v), 12) for k, f in SCALINGS.items()}
        layouts["unscaled, sBIT 12"] = (v, 12)
        layouts["unscaled, no sBIT (PadChest)"] = (v, None)
        for name, (stored, sbit) in layouts.items():
            path = tmp / "x.png"
            path.write_bytes(_png16(stored, sbit))
            ours = read_image(path).astype(np.float64)
            raw_cv = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.int64)
            raw_pil = np.asarray(Image.open(path)).astype(np.int64)
            shift = 4 if name.startswith("spec") else 0
            # the specification's reading of the raw samples (the divisor of the documented rule when
            # there is no sBIT: the smallest standard depth holding the maximum)
            div = 4095 if sbit or top > 1023 else (255 if top <= 255 else 1023)
            d_cv = np.max(np.abs(ours - (raw_cv >> shift) / div))
            d_pil = np.max(np.abs(ours - (raw_pil >> shift) / div))
            d_dcm = np.max(np.abs(ours - ref))
            old = np.max(np.abs(before_rule(stored) - ref)) if sbit else float("nan")
            print(f"   {name:<34}{top:>6}  {d_dcm:>11.2e}  {d_cv:>10.2e}  {d_pil:>10.2e}  {old:>17.3g}")
    print("   (no sBIT and max 255: read by the documented standard-depth rule, /255, so pydicom's /4095 "
          "differs by design)")


def jpeg_case() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPGExtended.dcm")
    print(f"\n2. 12-bit JPEG Extended DICOM ({Path(path).name})")
    have = importlib.util.find_spec("pylibjpeg") is not None
    if have:
        ref = pydicom.dcmread(path).pixel_array / 4095
        print(f"   with the dicom extra (pylibjpeg): max |cxrbench - pydicom| = "
              f"{np.max(np.abs(read_image(path) - ref)):.2e}")
    else:
        print("   with the dicom extra: not installed here")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", HIDE_EXTRA, str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"   without the extra (hidden): {'decoded' if result['ok'] else result['error']}")
    code = ("import importlib.abc, sys\n"
            "class H(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            "        if n.split('.')[0] in ('pylibjpeg', 'libjpeg', 'openjpeg'):\n"
            "            raise ModuleNotFoundError(n)\n"
            "sys.meta_path.insert(0, H())\n"
            "import pydicom\n"
            "try:\n    pydicom.dcmread(sys.argv[1]).pixel_array; print('pydicom decodes it')\n"
            "except Exception as e: print('pydicom without the extra:', ' '.join(str(e).split())[:160])\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), ""], capture_output=True, text=True,
                         timeout=120)
    print(f"   {out.stdout.strip()}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        png_case(Path(tmp))
    jpeg_case()


if __name__ == "__main__":
    main()
