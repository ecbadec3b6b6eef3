"""Indexing cost: `cxrbench index` on the four real metadata CSVs vs `pandas.read_csv` of them.

Figure (issue 3), printed as a ratio against a baseline measured in the same run:

  time to build (and write) the normalized index of NIH ChestX-ray14, CheXpert (train),
  PadChest and VinBigData from their official CSVs (~560,000 rows together, as shipped in the
  torchxrayvision wheel) with `build_index(..., out=...)`, versus the bare `pandas.read_csv` of the
  same four files with default options. Goal: at most 3x the bare read (PadChest's `Labels` parsed
  once per unique string, no Python loop per row per term).

Issue 14 added two costs, both measured here against the same bare read: the existence check (one
`os.scandir` per image folder; the bench lays out an empty placeholder file for every image of the
four releases, 564k files, so the check has real folders to list) and the stratified patient split
(the default way to carve or make splits). The `0.1 path` column indexes the same files with
`--carve hash` and no image folders (what cxrbench 0.1 did), as the before figure.

Both sides run `--repeats` times, interleaved; per file the best (minimum) wall time of each side
is reported, the least disturbed measurement on a shared machine, and CPU time (process time,
less sensitive to other load) is printed beside it. Index outputs go to a temporary
folder (Parquet + report JSON, i.e. everything `cxrbench index` writes).

Full size:  python bench/index.py
Smoke run:  python bench/index.py --rows 5000 --repeats 1
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

FILES = {  # dataset -> file name in torchxrayvision/data
    "nih": "Data_Entry_2017_v2020.csv.gz",
    "chexpert": "chexpert_train.csv.gz",
    "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "vindr": "vinbigdata-train.csv.gz",
}


def xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchxrayvision (dev dependency) is not installed; pass --data DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def truncated(src: Path, dst: Path, rows: int) -> Path:
    """The first ``rows`` records of a CSV (keeps quoting intact), gzipped."""
    df = pd.read_csv(src, dtype=str, keep_default_na=False, nrows=rows)
    with gzip.open(dst, "wt", newline="") as f:
        df.to_csv(f, index=False)
    return dst


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bare(files: dict[str, Path]) -> dict[str, tuple[float, float, int]]:
    """Per file: (wall s, CPU s, rows) of a default pandas.read_csv."""
    out = {}
    for name, path in files.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PadChest's mixed-type DtypeWarning
            wall, cpu, df = _timed(lambda p=path: pd.read_csv(p))
        out[name] = (wall, cpu, len(df))
    return out


def index(files: dict[str, Path], out: Path | None, roots: dict[str, Path] | None = None,
          **options) -> dict[str, tuple[float, float, int]]:
    """Per file: (wall s, CPU s, images) of build_index, writing the index and its report to ``out``
    (what `cxrbench index` does) or, with ``out=None``, building the validated frame only. ``roots``:
    the dataset roots (default: the CSV's folder, which holds no image folder)."""
    from cxrbench.index.build import build_index

    res = {}
    for name, path in files.items():
        target = out / f"{name}.parquet" if out is not None else None
        root = (roots or {}).get(name, path.parent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wall, cpu, (df, _, _) = _timed(
                lambda n=name, p=path, t=target, r=root: build_index(n, r, labels_file=p, out=t, views="all",
                                                                     **options))
        res[name] = (wall, cpu, len(df))
    return res


def placeholder_images(files: dict[str, Path], work: Path) -> dict[str, Path]:
    """A root per dataset holding an empty file at every image path of its index (the layout a
    release unpacks to), so the existence check lists real folders."""
    from cxrbench.index.build import build_index

    roots = {}
    for name, path in files.items():
        root = work / name
        root.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df, _, _ = build_index(name, path.parent, labels_file=path, views="all")
        for folder, group in df["path"].str.rpartition("/").groupby(0)[2]:
            d = root / folder
            d.mkdir(parents=True, exist_ok=True)
            for f in group:
                (d / f).touch()
        roots[name] = root
    return roots


def _best(runs: list[dict[str, tuple[float, float, int]]], k: int) -> dict[str, float]:
    """Per dataset, the least disturbed of the repeats (minimum) of measure k (0 wall, 1 CPU)."""
    return {name: min(r[name][k] for r in runs) for name in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=None, help="folder with the 4 CSVs (default: torchxrayvision's)"
    )
    ap.add_argument("--rows", type=int, default=None, help="first N rows of each file (smoke run)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the best time is reported")
    args = ap.parse_args()

    import cxrbench.index.build  # noqa: F401  (import cost is not part of either side)

    data = args.data or xrv_data()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {k: data / v for k, v in FILES.items()}
        if args.rows:
            files = {k: truncated(p, tmp / p.name, args.rows) for k, p in files.items()}
        out = tmp / "out"
        out.mkdir()
        t = time.perf_counter()
        roots = placeholder_images(files, tmp / "roots")
        print(f"placeholder images laid out in {time.perf_counter() - t:.1f} s")
        bares, indexes, builds, olds = [], [], [], []
        for _ in range(args.repeats):
            bares.append(bare(files))
            indexes.append(index(files, out, roots))
            builds.append(index(files, None, roots))
            olds.append(index(files, out, carve="hash"))
    rows = sum(v[2] for v in bares[0].values())
    images = sum(v[2] for v in indexes[0].values())
    print(
        f"rows read: {rows:,} in 4 files; images indexed (all views): {images:,}; "
        f"best of {args.repeats} interleaved repeats per file"
    )
    print(
        f"{'dataset':10s} {'read_csv s':>10s} {'index s':>8s} {'ratio':>7s}   {'CPU: read':>9s} "
        f"{'index':>7s} {'ratio':>7s}   {'build only s':>12s} {'ratio':>7s}   {'0.1 path s':>10s} "
        f"{'ratio':>7s}"
    )
    bw, bc, iw, ic = _best(bares, 0), _best(bares, 1), _best(indexes, 0), _best(indexes, 1)
    ow, old = _best(builds, 0), _best(olds, 0)
    for name in FILES:
        print(
            f"{name:10s} {bw[name]:10.3f} {iw[name]:8.3f} {iw[name] / bw[name]:6.2f}x   {bc[name]:9.3f} "
            f"{ic[name]:7.3f} {ic[name] / bc[name]:6.2f}x   {ow[name]:12.3f} {ow[name] / bw[name]:6.2f}x   "
            f"{old[name]:10.3f} {old[name] / bw[name]:6.2f}x"
        )
    tw, tiw, tc, tic, tow, told = (sum(d.values()) for d in (bw, iw, bc, ic, ow, old))
    print(
        f"{'total':10s} {tw:10.3f} {tiw:8.3f} {tiw / tw:6.2f}x   {tc:9.3f} {tic:7.3f} {tic / tc:6.2f}x   "
        f"{tow:12.3f} {tow / tw:6.2f}x   {told:10.3f} {told / tw:6.2f}x"
    )
    ratio = tiw / tw
    print(
        f"index (existence check + stratified split + write Parquet and report) / bare read_csv = "
        f"{ratio:.2f}x wall, {tic / tc:.2f}x CPU (goal <= 3x: {'met' if ratio <= 3 else 'NOT met'}; "
        "aim 1.5x); "
        f"build only {tow / tw:.2f}x; 0.1 path (hash carve, no image folders) {told / tw:.2f}x"
    )


if __name__ == "__main__":
    main()
