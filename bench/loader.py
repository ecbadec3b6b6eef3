"""Loader throughput and memory: cxrbench's cache loader vs the reference study's loader pattern.

Figures (issue 2), each printed as a ratio against a baseline measured in the same run:

1. Images per second delivered as training batches, cxrbench (``CacheDataset`` + ``make_loader``:
   uint8 [B, S, S] + float32 labels, one memmap read per batch) versus a faithful reproduction of
   the reference study's ``Dataset.__getitem__`` (per item: a boolean DataFrame filter on the image
   id over the whole index, ``cv2.imread`` of a JPEG at the cache resolution, torchvision
   ``ToPILImage`` + ``ToTensor`` composed per call, a per-label ``int(...values[0])`` loop), on the
   same images, with the index at each ``--rows`` size (extra rows are other images of a larger
   dataset that are not loaded). The reference is timed on ``--ref-images`` images of the epoch;
   every timing is the best of ``--repeat`` interleaved rounds (the machine may be shared).
2. CPU cost per image of the batched augmentation (``BatchTransform``: flip + rotation ±7°, 3
   channels, normalization) versus the reference's per-item PIL ``RandomHorizontalFlip`` +
   ``RandomRotation(7)`` + ``ToTensor``.
3. Resident memory of one DataLoader worker process iterating a dataset with a ``--rows[-1]``-row
   index, cxrbench vs the reference (RSS, PSS and private memory from /proc/PID/smaps_rollup).

Images: ``--images`` radiograph-like pictures (bench/_synthetic.py) written as JPEG (quality 95)
at ``--size`` for the reference, and prepared once into a cxrbench cache; both read from a warm
page cache. Data is kept in ``--workdir`` between runs.

Full size:  python bench/loader.py
Smoke run:  python bench/loader.py --images 300 --rows 300 3000 --ref-images 150
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.layout import CACHE_IMAGES, CACHE_INDEX, CACHE_MANIFEST

sys.path.insert(0, str(Path(__file__).resolve().parent))

SYNTHETIC_FINDINGS = ["cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding",
                      "consolidation", "pneumothorax", "pleural_thickening", "lung_opacity", "fibrosis",
                      "nodule_mass"]  # VinDr's 11, as the reference's VinDr loader


# -- the reference study's loader pattern -------------------------------------------------------------
class ReferenceDataset:
    """The released code's per-item pattern (see the module docstring), reimplemented for timing."""

    def __init__(self, index: pd.DataFrame, image_dir: Path, image_ids: list[str], findings: list[str],
                 augment: bool = False):
        self.subset_df = index  # the full index: every lookup filters all of its rows
        self.file_base_dir = str(image_dir)
        self.file_path_list = list(image_ids)
        self.chosen_labels = list(findings)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.file_path_list)

    def __getitem__(self, idx: int):
        import cv2
        import torch
        from torchvision import transforms

        img = cv2.imread(os.path.join(self.file_base_dir, self.file_path_list[idx] + ".jpg"))  # (h, w, 3)
        if self.augment:
            trans = transforms.Compose([transforms.ToPILImage(), transforms.RandomHorizontalFlip(p=0.5),
                                        transforms.RandomRotation(degrees=7), transforms.ToTensor()])
        else:
            trans = transforms.Compose([transforms.ToPILImage(), transforms.ToTensor()])
        img = trans(img)
        label_df = self.subset_df[self.subset_df["image_id"] == self.file_path_list[idx]]
        label = torch.zeros(len(self.chosen_labels))
        for k in range(len(self.chosen_labels)):
            label[k] = int(label_df[self.chosen_labels[k]].values[0])
        return img, label.float()


# -- data ----------------------------------------------------------------------------------------------
def make_images(work: Path, n: int, size: int, source: str) -> tuple[Path, pd.DataFrame, list[str]]:
    """``n`` JPEGs ``work/jpg/<image_id>.jpg`` at ``size`` and their Contract-2 index (root ``work``).

    ``phantom``: MIMIC-CXR-JPG-shaped phantoms (JPEG) from ``cxrbench.phantom.generate``, one image
    per patient, linked into one flat folder as the reference's loader expects; ``synthetic``:
    bench/_synthetic.py pictures with random labels. Reused when already there.
    """
    from cxrbench.index.schema import read_index, write_index

    image_dir = work / "jpg"
    stamp = work / f"jpg-{source}-{n}-{size}.done"
    index = work / f"index-{source}-{n}.parquet"
    if stamp.exists():
        df, findings = read_index(index)
        return image_dir, df, findings
    shutil.rmtree(image_dir, ignore_errors=True)
    image_dir.mkdir(parents=True)
    t = time.perf_counter()
    if source == "phantom":
        from cxrbench.phantom import generate

        phantom_dir = work / "phantom"
        truth = generate(phantom_dir, "mimic", n, size=size, seed=0, images_per_patient=1, overwrite=True)
        _, findings = read_index(phantom_dir / "_phantom" / "truth.parquet")
        df = truth.iloc[:n].reset_index(drop=True).copy()
        if len(df) < n:
            raise SystemExit(f"the phantom made {len(df)} images, fewer than --images {n}")
        for image_id, rel in zip(df["image_id"], df["path"], strict=True):
            os.link(phantom_dir / rel, image_dir / f"{image_id}.jpg")
        df["split"] = "train"
    else:
        import cv2

        from _synthetic import radiographs

        findings = list(SYNTHETIC_FINDINGS)
        rng = np.random.default_rng(1)
        labels = (rng.random((n, len(findings))) < 0.2).astype(np.float32)
        ids = [f"img{i:06d}" for i in range(n)]
        df = pd.DataFrame({"image_id": ids, "patient_id": [f"p{i // 2:06d}" for i in range(n)],
                           "study_id": None, "path": "", "view": "PA", "split": "train", "dataset": "bench",
                           "sex": "F", "age": 50.0, **{f: labels[:, k] for k, f in enumerate(findings)}})
        for image_id, img in zip(ids, radiographs(n, size, seed=0), strict=True):
            cv2.imwrite(str(image_dir / f"{image_id}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    df["path"] = [f"jpg/{i}.jpg" for i in df["image_id"]]
    write_index(df, index, findings)
    stamp.touch()
    print(f"  made {n} {source} JPEGs of {size}x{size} in {time.perf_counter() - t:.1f} s")
    return image_dir, df, findings


def extend_index(df: pd.DataFrame, rows: int, findings: list[str]) -> pd.DataFrame:
    """The index grown to ``rows`` rows with other images of a larger dataset (val/test, not loaded)."""
    extra = rows - len(df)
    if extra <= 0:
        return df.copy()
    rng = np.random.default_rng(2)
    more = pd.DataFrame({"image_id": [f"other{i:07d}" for i in range(extra)],
                         "patient_id": [f"q{i // 2:07d}" for i in range(extra)], "study_id": None,
                         "path": [f"other/{i:07d}.jpg" for i in range(extra)], "view": "PA",
                         "split": np.where(np.arange(extra) % 2 == 0, "val", "test"), "dataset": "bench",
                         "sex": "M", "age": 60.0,
                         **{f: (rng.random(extra) < 0.2).astype(np.float32) for f in findings}})
    return pd.concat([df[list(more.columns)], more], ignore_index=True)


def make_caches(work: Path, df: pd.DataFrame, findings: list[str], size: int, rows_list: list[int],
                source: str) -> dict[int, Path]:
    """A real cache of the images, and for each larger row count a cache whose first slots are those
    images and whose other slots (sparse, never read) belong to the extra index rows."""
    from cxrbench.cache.build import prepare_cache
    from cxrbench.index.schema import write_index

    base = work / f"cache-{source}-{len(df)}-{size}"
    t = time.perf_counter()
    manifest = prepare_cache(df, work, base, size=size, quiet=True, findings=findings, overwrite=True)
    if time.perf_counter() - t > 1:
        build = manifest["build"]
        print(f"  prepared the cxrbench cache of {len(df)} images: {build['images_per_second']:.0f} "
              f"images/s with {build['workers']} workers")
    caches = {}
    for rows in rows_list:
        if rows <= len(df):
            caches[rows] = base
            continue
        out = work / f"cache-{source}-{len(df)}-{size}-rows{rows}"
        if not (out / CACHE_MANIFEST).exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            shutil.copyfile(base / CACHE_IMAGES, out / CACHE_IMAGES)
            with open(out / CACHE_IMAGES, "r+b") as f:
                f.truncate(rows * size * size)
            full = extend_index(df, rows, findings)
            full["cache_row"] = np.arange(rows, dtype=np.int64)
            write_index(full, out / CACHE_INDEX, findings)
            m = json.loads((base / CACHE_MANIFEST).read_text())
            m["shape"] = [rows, size, size]
            (out / CACHE_MANIFEST).write_text(json.dumps(m))
        caches[rows] = out
    return caches


def warm(paths: list[Path]) -> None:
    """Read files once so both loaders start from a warm page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


# -- timing --------------------------------------------------------------------------------------------
def time_loader(loader, limit: int | None) -> tuple[float, int]:
    """(images/s, images) over one pass of ``loader`` or its first ``limit`` images."""
    t = time.perf_counter()
    n = 0
    for images, labels in loader:
        assert labels.shape[0] == images.shape[0]
        n += images.shape[0]
        if limit is not None and n >= limit:
            break
    return n / (time.perf_counter() - t), n


def loader_figures(args, image_dir: Path, df: pd.DataFrame, findings: list[str],
                   caches: dict[int, Path]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from cxrbench.data.dataset import CacheDataset
    from cxrbench.data.loader import make_loader

    ids = list(df["image_id"])
    print(f"\n[1] training batches/s, batch {args.batch_size}, {args.workers} loader worker(s), "
          f"{len(ids)} images of {args.size}x{args.size}")
    for rows in args.rows:
        ds = CacheDataset(caches[rows], split="train")
        assert len(ds) == len(ids)
        ours_loader = make_loader(ds, args.batch_size, shuffle=True, seed=0, num_workers=args.workers,
                                  pin_memory=False)
        plain_loader = make_loader(ds, args.batch_size, shuffle=True, seed=0, batched=False,
                                   num_workers=args.workers, pin_memory=False)
        ref_ds = ReferenceDataset(extend_index(df, rows, findings), image_dir, ids, findings)
        ref_loader = DataLoader(ref_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                generator=torch.Generator().manual_seed(0))
        time_loader(ref_loader, args.batch_size)  # warm-up: first-call imports and allocations
        ours = plain = ref = 0.0
        for _ in range(args.repeat):  # interleaved rounds, best kept: the machine is shared
            rate, n_ours = time_loader(ours_loader, None)
            ours = max(ours, rate)
            plain = max(plain, time_loader(plain_loader, None)[0])
            rate, n_ref = time_loader(ref_loader, args.ref_images)
            ref = max(ref, rate)
        print(f"  index {rows:>7,} rows: cxrbench {ours:9.0f} img/s ({n_ours} images)  "
              f"[plain DataLoader + default collate {plain:8.0f} img/s]  "
              f"reference {ref:7.1f} img/s ({n_ref} images)  -> {ours / ref:7.1f}x")


def augment_figures(args, image_dir: Path, caches: dict[int, Path], df: pd.DataFrame,
                    findings: list[str]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from cxrbench.data.augment import AugmentConfig, BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.data.loader import make_loader

    n = min(args.ref_images, len(df))
    ds = CacheDataset(caches[args.rows[0]], split="train")
    batches = [ds[list(range(i, min(i + args.batch_size, n)))][0] for i in range(0, n, args.batch_size)]
    tf = BatchTransform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), augment=AugmentConfig()).train()
    gen = torch.Generator().manual_seed(0)
    tf(batches[0], generator=gen)  # warm-up
    ref_ds = ReferenceDataset(df, image_dir, list(df["image_id"]), findings, augment=True)
    import cv2
    from torchvision import transforms

    imgs = [cv2.imread(str(image_dir / f"{i}.jpg")) for i in df["image_id"][:n]]

    def ours_pass() -> None:
        for b in batches:
            tf(b, generator=gen)

    def ref_aug_pass() -> None:
        for img in imgs:
            transforms.Compose([transforms.ToPILImage(), transforms.RandomHorizontalFlip(p=0.5),
                                transforms.RandomRotation(degrees=7), transforms.ToTensor()])(img)

    def ref_plain_pass() -> None:
        for img in imgs:
            transforms.Compose([transforms.ToPILImage(), transforms.ToTensor()])(img)

    best = {"ours": float("inf"), "ref_aug": float("inf"), "ref_plain": float("inf")}
    for _ in range(args.repeat):  # CPU time of this (single-threaded) process, best of interleaved rounds
        for key, fn in (("ours", ours_pass), ("ref_aug", ref_aug_pass), ("ref_plain", ref_plain_pass)):
            t = time.process_time()
            fn()
            best[key] = min(best[key], (time.process_time() - t) / n)
    ours, ref_aug, ref_plain = best["ours"], best["ref_aug"], best["ref_plain"]
    print(f"\n[2] augmentation CPU cost per image ({torch.get_num_threads()} torch thread, {n} images, "
          f"CPU time)")
    print(f"  cxrbench BatchTransform (flip + rotate 7 + 3ch + normalize, batches of {args.batch_size}): "
          f"{ours * 1e3:.3f} ms/image")
    print(f"  reference per item PIL flip + RandomRotation(7) + ToTensor: {ref_aug * 1e3:.3f} ms/image "
          f"(ToPILImage + ToTensor alone {ref_plain * 1e3:.3f} ms)  -> {ref_aug / ours:.1f}x")
    # end to end: training-ready augmented batches on the CPU
    loader = make_loader(ds, args.batch_size, shuffle=True, seed=0, num_workers=args.workers,
                         pin_memory=False)
    t, m = time.perf_counter(), 0
    for images, _ in loader:
        tf(images, generator=gen)
        m += images.shape[0]
    ours_e2e = m / (time.perf_counter() - t)
    ref_loader = DataLoader(ref_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                            generator=torch.Generator().manual_seed(0))
    ref_e2e, _ = time_loader(ref_loader, n)
    print(f"  augmented training batches, index {len(df):,} rows: cxrbench loader + BatchTransform "
          f"{ours_e2e:.0f} img/s, reference with augment=True {ref_e2e:.1f} img/s  "
          f"-> {ours_e2e / ref_e2e:.1f}x")


# -- memory (run in fresh subprocesses so the parent's data does not inflate the figures) ---------------
def _smaps(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = float(value.split()[0]) / 1024  # MiB
    return {"rss": out["Rss"], "pss": out["Pss"],
            "private": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def memory_child(kind: str, cache: str, image_dir: str, rows: int, batch_size: int) -> None:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.data.loader import make_loader

    base = _smaps(os.getpid())
    if kind == "cxrbench":
        ds = CacheDataset(cache)
        loader = make_loader(ds, batch_size, shuffle=True, seed=0, num_workers=1, pin_memory=False)
    elif kind == "bare":  # a worker with nothing to hold: the per-process floor of torch + DataLoader
        ds = torch.utils.data.TensorDataset(torch.zeros(30 * batch_size, 1))
        loader = DataLoader(ds, batch_size=batch_size, num_workers=1, persistent_workers=True)
    else:
        from cxrbench.index.schema import read_index

        df, findings = read_index(Path(cache) / CACHE_INDEX)
        ids = list(df["image_id"][df["split"] == "train"])
        ds = ReferenceDataset(df.drop(columns=["cache_row"]), Path(image_dir), ids, findings)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=1,
                            generator=torch.Generator().manual_seed(0), persistent_workers=True)
    it = iter(loader)
    for _ in range(min(30, len(loader))):
        next(it)
    worker = _smaps(it._workers[0].pid)
    main = _smaps(os.getpid())
    print(json.dumps({"rows": rows, "worker": worker, "main": main, "torch_import": base}))


def memory_figures(args, work: Path, image_dir: Path, caches: dict[int, Path]) -> None:
    results: dict[tuple[str, int], dict] = {}
    cmd = [sys.executable, __file__, "--_memory", "bare", "-", "-", "0", str(args.batch_size)]
    bare = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    for rows in sorted({args.rows[0], args.rows[-1]}):
        for kind in ("cxrbench", "reference"):
            cmd = [sys.executable, __file__, "--_memory", kind, str(caches[rows]), str(image_dir), str(rows),
                   str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[kind, rows] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["cxrbench", args.rows[-1]]["torch_import"]
    print("\n[3] one DataLoader worker process (fork) after 30 batches, MiB (goal < 300 per worker);")
    print("    RSS counts pages shared with the parent (torch libraries); private = the worker's own")
    print(f"  the parent after `import torch, cxrbench.data`: RSS {base['rss']:.0f}, "
          f"private {base['private']:.0f}")
    floor = bare["worker"]
    print(f"  baseline: a worker over a 1-column TensorDataset: RSS {floor['rss']:6.0f}  "
          f"PSS {floor['pss']:6.0f}  private {floor['private']:6.0f}")
    for (kind, rows), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        w = res["worker"]
        print(f"  index {rows:>7,} rows  {kind:9s} worker: RSS {w['rss']:6.0f}  PSS {w['pss']:6.0f}  "
              f"private {w['private']:6.0f}")
    rows = args.rows[-1]
    ours, ref = results["cxrbench", rows]["worker"], results["reference", rows]["worker"]
    print(f"  at {rows:,} rows, reference / cxrbench: RSS {ref['rss'] / ours['rss']:.1f}x, "
          f"PSS {ref['pss'] / ours['pss']:.1f}x, private {ref['private'] / ours['private']:.1f}x; "
          f"cxrbench / baseline worker: RSS {ours['rss'] / floor['rss']:.2f}x, "
          f"private {ours['private'] / floor['private']:.1f}x")


def _default_source() -> str:
    try:
        from cxrbench.phantom import generate  # noqa: F401
    except ImportError:
        return "synthetic"
    return "phantom"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory":
        memory_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="images loaded (default 20,000)")
    p.add_argument("--size", type=int, default=224, help="image side, px (default 224)")
    p.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000], help="index sizes")
    p.add_argument("--batch-size", type=int, default=30, help="batch size (reference study: 30)")
    p.add_argument("--ref-images", type=int, default=1_500, help="images timed for the reference loader")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, same for both (default 0)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved timing rounds, best kept (default 3)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cxrbench-bench-loader"))
    p.add_argument("--source", choices=("phantom", "synthetic"), default=None,
                   help="images: cxrbench phantoms (default when installed) or bench/_synthetic.py")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    args.rows = sorted(max(r, args.images) for r in args.rows)
    args.source = args.source or _default_source()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    import torch

    # One intra-op thread, as in DataLoader worker processes: on a shared 2-core machine OpenMP
    # threads of a loading process fight the other processes and distort per-item costs.
    torch.set_num_threads(1)
    print(f"bench/loader.py  images={args.images} ({args.source}) size={args.size} rows={args.rows} "
          f"batch={args.batch_size} workers={args.workers}  load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores")
    image_dir, df, findings = make_images(work, args.images, args.size, args.source)
    caches = make_caches(work, df, findings, args.size, args.rows, args.source)
    warm([*sorted(image_dir.iterdir()), caches[args.rows[0]] / CACHE_IMAGES])
    loader_figures(args, image_dir, df, findings, caches)
    augment_figures(args, image_dir, caches, df, findings)
    if not args.skip_memory:
        memory_figures(args, work, image_dir, caches)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
