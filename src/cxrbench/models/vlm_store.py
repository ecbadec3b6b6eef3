"""``weights fetch`` / ``weights import`` for vision-language inits: the image tower converted to timm,
the text tower beside it, both in cxrbench's store.

The store folder of such an init (``$CXRBENCH_HOME/weights/<key>/``) holds

- ``model.safetensors``: the image tower as timm weights (:mod:`cxrbench.models.vlm_convert`; for CLIP
  models the image projection is its ``head``), loaded by ``create_model`` like any imported weights;
- ``text/``: the text tower in the library's own layout (the model's config, its tokenizer files,
  ``text.safetensors`` with the text weights and the logit scale/bias; ``hf_text/config.json`` for a
  transformers text model inside an open_clip one), read by :mod:`cxrbench.models.vlm_text`;
- ``weights.json``: the source file and its SHA-256, and what the conversion read (timm build options,
  normalization, input size, joint-space width, logit scale and bias, context length).

The image tower is verified by a strict load into the timm model and the text tower by loading it with
its library before anything is put in place; ``model.safetensors`` is written last, so a folder without
it is an interrupted import.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256
from cxrbench.models import store as wt
from cxrbench.models.safeload import SAFETENSORS_NAME
from cxrbench.models.vlm_convert import (
    HF_CONFIG,
    HF_PREPROCESSOR,
    OPEN_CLIP_CONFIG,
    build_timm,
    text_state,
    to_timm,
)
from cxrbench.models.vlm_folder import LibFolder, read_folder
from cxrbench.models.vlm_text import HF_TEXT_DIR, TEXT_DIR, TEXT_WEIGHTS, TOKENIZER_FILES, load_text


def text_dir(spec: Any) -> Path:
    """The ``text/`` bundle of a registered vision-language init in the store."""
    return wt.imported_dir(spec.weight_source.key) / TEXT_DIR


def _copy_tokenizer(lib: LibFolder, dest: Path, repo: str | None) -> list[str]:
    """Tokenizer files from the folder, else from the HF cache of ``repo``; the names copied."""
    copied = [n for n in TOKENIZER_FILES if (lib.folder / n).is_file()]
    for name in copied:
        shutil.copyfile(lib.folder / name, dest / name)
    if not copied and repo:
        source = wt.WeightSource(key=repo.replace("/", "--"), hf_repo=repo)
        for name in TOKENIZER_FILES:
            found = wt.locate_extra(source, name)
            if found is not None:
                shutil.copyfile(found, dest / name)
                copied.append(name)
    return copied


def _write_text_bundle(lib: LibFolder, state: dict[str, Any], dest: Path, what: str) -> dict[str, Any]:
    """The ``text/`` bundle of ``lib`` written into ``dest`` (created); what it holds."""
    from cxrbench.models import safeload

    dest.mkdir(parents=True)
    text_cfg = (
        (lib.config.get("model_cfg", lib.config).get("text_cfg") or {}) if lib.family == "open-clip" else {}
    )
    if lib.family == "open-clip":
        shutil.copyfile(lib.folder / OPEN_CLIP_CONFIG, dest / OPEN_CLIP_CONFIG)
        hf_model = text_cfg.get("hf_model_name")
        if hf_model:
            from cxrbench.models.vlm_text import hf_text_dir

            (dest / HF_TEXT_DIR).mkdir()
            shutil.copyfile(hf_text_dir(lib.folder, hf_model) / HF_CONFIG, dest / HF_TEXT_DIR / HF_CONFIG)
        tokenizer_repo = text_cfg.get("hf_tokenizer_name")
    else:
        shutil.copyfile(lib.folder / HF_CONFIG, dest / HF_CONFIG)
        tokenizer_repo = None
    copied = _copy_tokenizer(lib, dest, tokenizer_repo)
    if not copied and (lib.family == "hf-siglip" or tokenizer_repo):
        raise InputError(
            "no tokenizer files (tokenizer.json, spiece.model, vocab.txt ...) beside the weights",
            where=str(lib.folder),
            fix=f"copy the whole repository folder of {what}, tokenizer "
            "files included (`cxrbench weights fetch` downloads them)",
        )
    safeload.save_state_dict(
        text_state(lib.family, state), dest / TEXT_WEIGHTS, metadata={"cxrbench_source": lib.weights.name}
    )
    return {"tokenizer_files": copied, "hf_text_config": bool(text_cfg.get("hf_model_name"))}


def _replace_dir(staged: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)


def import_vlm(spec: Any, source: str | os.PathLike, force: bool = False) -> wt.WeightLocation:
    """Convert a copy of ``spec``'s repository folder (open_clip or transformers SigLIP) into the store."""
    import torch

    from cxrbench.models import safeload

    src = Path(source).expanduser()
    lib = read_folder(src if src.is_dir() else src.parent, spec.name)
    if lib.family != spec.convert:
        raise InputError(
            f"{spec.name} is a {spec.convert} model but the folder holds a {lib.family} one",
            where=str(lib.folder),
            fix=f"copy the repository folder of {spec.hf_repo}",
        )
    plan = lib.plan()
    where = str(lib.weights)
    dest_dir = wt.imported_dir(spec.weight_source.key)
    dest = dest_dir / SAFETENSORS_NAME
    if dest.exists() and not force:
        raise InputError(
            f"weights for {spec.name} were already converted",
            where=str(dest),
            fix="add --force to replace them",
        )
    if dest.exists() and wt.import_record(spec.weight_source.key) is None:
        raise InputError(
            f"{SAFETENSORS_NAME} is there without the {wt.IMPORT_RECORD} cxrbench writes, so it is not "
            "cxrbench's to replace",
            where=str(dest),
            fix="move it away, then import again",
        )
    state = safeload.load_state_dict(lib.weights)
    with torch.random.fork_rng(devices=[]):
        model = build_timm(plan, spec.name)
    converted = to_timm(plan, state, model, where)
    del model
    dest_dir.mkdir(parents=True, exist_ok=True)
    staged = dest_dir / f".staged-{os.getpid()}.safetensors"
    staged_text = dest_dir / f".staged-text-{os.getpid()}"
    try:
        bundle = _write_text_bundle(lib, state, staged_text, spec.name)
        tower = load_text(staged_text, staged_text / TEXT_WEIGHTS, lib.family)  # the text tower must load
        safeload.save_state_dict(
            converted,
            staged,
            metadata={"cxrbench_source": lib.weights.name, "cxrbench_converted_from": lib.family},
        )
        record = {
            "key": spec.weight_source.key,
            "init": spec.name,
            "hf_repo": spec.hf_repo,
            "source_file": str(lib.weights.resolve()),
            "source_sha256": file_sha256(lib.weights),
            "source_format": lib.family,
            "converted_to_safetensors": True,
            "sha256": file_sha256(staged),
            "converted": {
                "from": lib.family,
                "timm_arch": plan.arch,
                "timm_kwargs": plan.kwargs,
                "mean": list(plan.mean),
                "std": list(plan.std),
                "image_size": plan.image_size,
                "config_image_size": plan.image_size,
                "vlm": {
                    "embed_dim": plan.embed_dim,
                    "head_rows": plan.head_rows,
                    **tower.describe(),
                    "source": str(lib.folder),
                    "text": bundle,
                },
            },
        }
        from cxrbench import __version__
        from cxrbench.common.provenance import now_iso

        record.update(imported=now_iso(), cxrbench=__version__)
        _replace_dir(staged_text, dest_dir / TEXT_DIR)
        atomic_write_json(dest_dir / wt.IMPORT_RECORD, record)
        os.replace(staged, dest)  # last: its presence means the conversion is complete
    finally:
        if staged.exists():
            staged.unlink()
        if staged_text.exists():
            shutil.rmtree(staged_text)
    return wt.WeightLocation(path=dest, origin="imported")


def _download_optional(repo: str, names: tuple[str, ...], revision: str | None = None) -> None:
    """Download those of ``names`` that ``repo`` has into the HF cache (tokenizer files, configs); offline
    (``HF_HUB_OFFLINE``) nothing: what the cache holds is used."""
    if wt.hf_offline():
        return
    import huggingface_hub
    from huggingface_hub import utils as hf_errors

    try:
        huggingface_hub.snapshot_download(
            repo,
            allow_patterns=list(names),
            revision=revision,
            cache_dir=str(wt.hf_hub_cache()),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except hf_errors.GatedRepoError:
        raise InputError(
            "the repository is gated: its licence must be accepted first",
            where=f"hub repo {repo}",
            fix=f"accept it at https://huggingface.co/{repo}, then log in (`hf auth login` or "
            "HF_TOKEN) and fetch again",
        ) from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise InputError(
            f"download failed ({type(e).__name__}: {e})",
            where=f"hub repo {repo}",
            fix="retry; or copy the repository folder here and run `cxrbench weights import`",
        ) from None


def fetch_vlm(spec: Any, force: bool = False) -> wt.WeightLocation:
    """``weights fetch``: the repository's configs, weights and tokenizer files into the HF cache (plus the
    config and tokenizer of a transformers text model an open_clip config names), then :func:`import_vlm`."""
    source = spec.weight_source
    found = None if force else wt.locate_hub(source)
    if found is None:
        found = wt.fetch(source, spec.name, force=force)  # offline, gated and missing-file errors
    _download_optional(spec.hf_repo, (*TOKENIZER_FILES, HF_PREPROCESSOR), source.revision)
    if spec.convert == "open-clip":
        from cxrbench.common.fileio import read_json

        cfg = read_json(found.path.parent / OPEN_CLIP_CONFIG)
        text_cfg = (cfg.get("model_cfg", cfg).get("text_cfg") or {}) if isinstance(cfg, dict) else {}
        for key, names in (("hf_model_name", (HF_CONFIG,)), ("hf_tokenizer_name", TOKENIZER_FILES)):
            repo = text_cfg.get(key)
            if isinstance(repo, str) and repo.count("/") == 1:
                _download_optional(repo, names)
    return import_vlm(spec, found.path.parent, force=True)
