"""`cxrbench weights list|fetch|import`: which initializations exist and which are available offline."""

from __future__ import annotations

import json

import typer

_HELP = (
    "Pretrained weights: list the registered initializations, fetch them, import local copies.\n\n"
    "Weights are searched in cxrbench's store ($CXRBENCH_HOME/weights, default ~/.cache/cxrbench), then in "
    "the Hugging Face cache ($HF_HUB_CACHE or $HF_HOME/hub, default ~/.cache/huggingface/hub). "
    "Training never downloads: with HF_HUB_OFFLINE=1 everything works once the weights are here."
)


def _norm_name(mean, std) -> str:
    from cxrbench.models.registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

    if tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return "imagenet"
    if tuple(mean) == INCEPTION_MEAN and tuple(std) == INCEPTION_STD:
        return "0.5/0.5"
    return f"{list(mean)}/{list(std)}"


def _table(rows: list[dict[str, str]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def list_rows(pattern: str | None = None) -> list[dict[str, str]]:
    """One row per registered init: name, timm model, patch, resolution, normalization, license, presence."""
    from cxrbench.models import registry
    from cxrbench.models import store as wt

    rows = []
    for name in registry.registered_inits(pattern):
        spec = registry.INITS[name]
        found = wt.locate(spec.weight_source)
        rows.append(
            {
                "init": name,
                "timm_model": spec.timm_name,
                "architecture": spec.architecture,
                "patch": str(spec.patch_size or "-"),
                "resolution": str(spec.image_size),
                "normalization": _norm_name(spec.mean, spec.std),
                "license": spec.license,
                "present": "yes" if found else "no",
                "location": found.describe() if found else "-",
                "pretrained_on": ",".join(spec.pretrained_on) or "-",
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    """Add the `weights` command group to app."""
    group = typer.Typer(
        help=_HELP, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]}
    )

    @group.command("list")
    def list_cmd(
        pattern: str = typer.Argument(None, help="Shell wildcard on init names, e.g. 'dinov2*'."),
        as_json: bool = typer.Option(
            False, "--json", help="Print JSON (one object per init) instead of a table."
        ),
    ) -> None:
        """List the registered initializations and whether their weights are present.

        One row per init: timm model, patch size, default resolution, normalization, licence,
        and where its weights are (imported copy or Hugging Face cache).

        Besides these names, --init accepts timm:<model>[.tag], hf-hub:<org>/<repo>,
        checkpoint:<path> (a cxrbench best.safetensors or a timm folder) and random-<arch>."""
        rows = list_rows(pattern)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"no registered initialization matches {pattern!r}")
            return
        cols = [
            "init",
            "timm_model",
            "patch",
            "resolution",
            "normalization",
            "license",
            "present",
            "location",
            "pretrained_on",
        ]
        typer.echo(_table(rows, cols))
        from cxrbench.models.registry import RANDOM_ALIASES, RANDOM_NOTES

        randoms = [{"init": f"random-{k}", "timm_model": v, "note": RANDOM_NOTES.get(k, "")}
                   for k, v in RANDOM_ALIASES.items()]
        table = _table(randoms, ["init", "timm_model", "note"])
        typer.echo("\nRandom initializations (no weights to fetch):\n" + table)
        typer.echo(
            "\nAlso: timm:<model>[.tag], hf-hub:<org>/<repo>, checkpoint:<path>, and random-<arch> for "
            "any registered init or timm architecture (e.g. random-dinov2-vitb14)."
        )

    @group.command("fetch")
    def fetch_cmd(
        name: str = typer.Argument(..., help="A registered init, timm:<model>[.tag] or hf-hub:<org>/<repo>."),
        force: bool = typer.Option(False, "--force", help="Download again even when the file is cached."),
    ) -> None:
        """Download the weights of NAME from the Hugging Face hub into the HF cache.

        Uses huggingface_hub (token from HF_TOKEN or `hf auth login` for gated repositories;
        HF_ENDPOINT for a mirror). Afterwards training works offline (HF_HUB_OFFLINE=1).
        Transformers-format inits (rad-dino, cxformer-*) are converted to timm after the download."""
        from cxrbench.common.errors import InputError
        from cxrbench.models import convert, registry, resolve
        from cxrbench.models import store as wt

        spec = registry.INITS.get(name.strip().lower())
        if spec is not None and spec.convert:
            found = convert.fetch_converted(spec, force=force)
            typer.echo(f"{name}: fetched {spec.hf_repo} and converted it to timm: {found.path}")
            return
        source = resolve.weight_source(name)
        if source is None:
            raise InputError(
                f"{name!r} has no pretrained weights to fetch",
                where=f"init {name}",
                fix="random- inits need none; checkpoint: inits are local files",
            )
        before = None if force else wt.locate(source)
        if before is not None and before.origin == "hf-cache":
            typer.echo(f"{name}: already present ({before.describe()})")
            return
        found = wt.fetch(source, name, force=force)
        typer.echo(f"{name}: fetched {found.path}")
        if before is not None and before.origin == "imported":
            typer.echo(f"note: an imported copy takes precedence: {before.path}")

    @group.command("import")
    def import_cmd(
        name: str = typer.Argument(..., help="A registered init or timm:<model>[.tag]."),
        file: str = typer.Argument(
            ...,
            help="A .safetensors file, a PyTorch state dict (.pth/.bin/.pt), "
            "or a folder holding model.safetensors / pytorch_model.bin.",
        ),
        force: bool = typer.Option(False, "--force", help="Replace weights imported before."),
        verify: bool = typer.Option(
            True,
            "--verify/--no-verify",
            help="Build the model and load the file strictly before accepting it.",
        ),
    ) -> None:
        """Import a local weight file for NAME into cxrbench's store ($CXRBENCH_HOME/weights/<timm model>/).

        The result is always model.safetensors (PyTorch files are read with
        torch.load(weights_only=True) and converted; a pickle that needs more is refused).
        Original Meta DINOv2 .pth files work too: timm converts their keys at load time.
        An imported copy is used before the Hugging Face cache.

        Inits published in Hugging Face transformers' format (rad-dino, cxformer-*) take the
        repository folder (model.safetensors, config.json, preprocessor_config.json): the weights are
        converted to timm, and the normalization and input size are read from the configs."""
        from pathlib import Path

        from cxrbench.common.errors import InputError
        from cxrbench.models import build, convert, registry, resolve
        from cxrbench.models import store as wt

        spec = registry.INITS.get(name.strip().lower())
        if spec is not None and spec.convert:
            found = convert.import_converted(spec, file, force=force)
            record = wt.import_record(spec.weight_source.key) or {}
            typer.echo(f"{name}: converted {file} -> {found.path} (sha256 {record.get('sha256', '?')[:16]})")
            return
        resolved = resolve.resolve_init(name)
        if resolved.kind not in ("registered", "timm") or resolved.source is None:
            raise InputError(
                f"{name!r} takes no imported weights",
                where=f"init {name}",
                fix="import for a registered init or timm:<model.tag>; use checkpoint:<path> "
                "for your own checkpoints",
            )

        def check(path: Path) -> None:
            build.check_weights_file(name, path)

        found = wt.import_weights(resolved.source, name, file, verify=check if verify else None, force=force)
        record = wt.import_record(resolved.source.key) or {}
        how = "converted to safetensors" if record.get("converted_to_safetensors") else "copied"
        typer.echo(
            f"{name}: imported {file} -> {found.path} ({how}; sha256 {record.get('sha256', '?')[:16]})"
        )

    app.add_typer(group, name="weights")
