"""`cxrbench prepare`: decode and preprocess every image of an index once into a cache (Contract 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrbench.commands._help import fold_paragraphs

_HELP = """Decode, resize and (optionally) equalize every image of an index once, into a cache.

The cache (--out) holds images.u8 (uint8 N x SIZE x SIZE, a numpy memmap), index.parquet (the
index rows in cache order, with cache_row) and manifest.json (the recipe, counts, failures),
written last: a folder without manifest.json is an unfinished build, never a cache.

Images: PNG 8/16-bit, JPEG, DICOM (modality LUT, VOI LUT/window, MONOCHROME1 inverted), colour
to gray. Resize modes: stretch (each axis to SIZE, as the reference study), pad (keep the aspect,
black borders), crop (centred square). Shrinking is exact area averaging (--resample area, OpenCV
INTER_AREA); --resample pil-box is the resampler of caches made before cxrbench 0.2 (Pillow BOX,
exact only at integer factors), to reproduce them. Equalization (default on, as the reference study
and MIMIC-CXR-JPG) is OpenCV-style histogram equalization after resizing.

Resumable: after a kill or a failure, run the same command again; finished chunks are kept.
Idempotent: with the same recipe and index an existing cache is left alone ("nothing to do").
A different recipe into an existing cache is refused unless --overwrite (which replaces only the
cache's own files); a cache made by the legacy resampler counts as a different recipe, so it is
rebuilt only when you ask.

Unreadable images: by default every image is still processed, then the command fails naming each
bad file and its reason (no manifest, exit 2). With --skip-bad those rows are left out of the
cache and listed under "failures" in manifest.json.

Examples:

  cxrbench prepare --index nih.parquet --root /data/nih --out cache/nih-224

  cxrbench prepare --index padchest.parquet --root /data/padchest --out cache/pc-512 --size 512
  --resize pad --workers 8 --skip-bad
"""


HELP = fold_paragraphs(_HELP)


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("prepare", help=HELP, no_args_is_help=True)
    def prepare_command(
        index: Path = typer.Option(..., "--index", help="Normalized index (Parquet) from `cxrbench index` "
                                   "or `cxrbench phantom`.", show_default=False),
        root: Path = typer.Option(..., "--root", help="Dataset root the index's paths are relative to.",
                                  show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="Cache directory to create (or resume).",
                                 show_default=False),
        size: int = typer.Option(224, "--size", help="Side of the square images, pixels."),
        resize: str = typer.Option("stretch", "--resize", help="stretch, pad (letterbox) or crop (centre)."),
        equalize: bool = typer.Option(True, "--equalize/--no-equalize",
                                      help="Histogram equalization after resizing."),
        resample: str = typer.Option("area", "--resample",
                                     help="Shrinking resampler: area (exact) or pil-box (legacy caches)."),
        workers: int = typer.Option(None, "--workers", "-j", help="Worker processes [default: all cores].",
                                    show_default=False),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave unreadable images out (listed in the "
                                      "manifest) instead of failing."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild a cache that has another recipe."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages."),
    ) -> None:
        from cxrbench.cache.build import prepare_cache

        manifest = prepare_cache(index, root, out, size=size, resize=resize, equalize=equalize,
                                 workers=workers, skip_bad=skip_bad, quiet=quiet, overwrite=overwrite,
                                 resample=resample)
        counts = manifest["counts"]
        recipe = manifest["recipe"]
        if not quiet:
            skipped = (f", {counts['failed']} unreadable left out (see manifest.json)"
                       if counts["failed"] else "")
            typer.echo(f"cache {out}: {counts['images']} images of {recipe['size']}x{recipe['size']} "
                       f"({recipe['resize']}, {'equalized' if recipe['equalize'] else 'not equalized'}, "
                       f"{recipe.get('resample', 'pil-box')} resampling)"
                       f"{skipped}", err=True)
