"""`cxrbench demo`: the embedded default study on synthetic phantoms, CPU only, a few minutes.

Generates a "source" site and two "target" sites with the phantom generator and runs the study
in ``cxrbench/configs/demo.yaml`` with the ordinary study runner: ``random`` (a small ViT from
scratch) and ``source-pretrained`` (supervised on the source site, then fine-tuned on each target),
plus ``dinov2-vits14`` and ``imagenet21k-vitb16`` when their weights are already on this machine.
A second run with nothing changed skips every step (content hashes) and only reprints the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_text, read_text
from cxrbench.common.layout import DEMO_CONFIG
from cxrbench.common.yamlio import load_yaml_text

DEMO_HEADER = "# written by `cxrbench demo`"

# label -> (registry init, training overrides): pretrained natural-image arms, used when cached.
# Small inputs (a multiple of the 14 / 16 px patch) and few epochs keep these 22M / 86M-parameter
# backbones within the demo's CPU budget.
OPTIONAL_INITS: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2": ("dinov2-vits14", {"image_size": 56, "lr": 5.0e-5, "epochs": 3, "warmup_epochs": 0.5}),
    "imagenet": ("imagenet21k-vitb16", {"image_size": 48, "lr": 5.0e-5, "epochs": 3, "warmup_epochs": 0.5}),
}
_PATCH = {"dinov2": 14, "imagenet": 16}
# --tiny: the smallest study that still exercises every stage (tests, smoke runs).
TINY = {"source": 120, "target": 90, "size": 32, "epochs": 2, "pretrain_epochs": 2, "bootstrap": 50}


@dataclass
class DemoResult:
    """What ``run_demo`` produced."""

    out: Path
    report: Path
    config: Path
    table: str
    skipped: list[str] = field(default_factory=list)
    executed: int = 0
    seconds: float = 0.0


def base_config() -> dict[str, Any]:
    """The packaged demo study (a plain dict, before optional arms and --tiny)."""
    text = resources.files("cxrbench").joinpath("configs/demo.yaml").read_text(encoding="utf-8")
    return load_yaml_text(text, "packaged demo.yaml")[0]


def cached_weights(init: str) -> bool:
    """True when the weights of a registered init are on this machine (no network is touched)."""
    from cxrbench.models.registry import get_init
    from cxrbench.models.store import locate

    try:
        return locate(get_init(init).weight_source) is not None
    except Exception:  # an unusable cache is the same as no cache here
        return False


def demo_config(tiny: bool = False, optional: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The study to run and one line per optional arm that is skipped (with how to enable it)."""
    cfg = base_config()
    skipped = []
    if optional:
        for label, (init, overrides) in OPTIONAL_INITS.items():
            if cached_weights(init):
                targets = [d for d in cfg["datasets"] if d != "source"]
                lr = overrides["lr"]  # tuned around its own (pretrained) learning rate, on its schedule
                tuning = {"space": {"lr": [lr, lr / 3]}, "epochs": overrides["epochs"]}
                cfg["inits"][label] = {"init": init, "datasets": targets, "train": dict(overrides),
                                       "tuning": tuning}
            else:
                skipped.append(
                    f"{init}: weights not on this machine, arm skipped "
                    f"(enable: cxrbench weights fetch {init}, then rerun the demo)"
                )
    if tiny:
        for name, ds in cfg["datasets"].items():
            ds["phantom"]["patients"] = TINY["source"] if name == "source" else TINY["target"]
            ds["phantom"]["size"] = TINY["size"]
        cfg["preprocess"] = {"px32": {"size": TINY["size"], "resize": "stretch", "equalize": True}}
        cfg["train"]["epochs"] = TINY["epochs"]
        for spec in cfg["inits"].values():
            if "pretrain" in spec:
                spec["pretrain"]["epochs"] = TINY["pretrain_epochs"]
        for label, spec in cfg["inits"].items():
            if isinstance(spec.get("tuning"), dict):
                spec["tuning"]["epochs"] = min(spec["tuning"]["epochs"], TINY["epochs"])
            if "train" in spec:
                spec["train"]["epochs"] = min(spec["train"].get("epochs", 99), TINY["epochs"])
                if "image_size" in spec["train"]:
                    p = _PATCH.get(label, 16)
                    spec["train"]["image_size"] = p * max(1, round(TINY["size"] / p))
        if "tuning" in cfg:
            cfg["tuning"]["epochs"] = min(cfg["tuning"].get("epochs", 99), TINY["epochs"])
        cfg["evaluation"]["bootstrap"] = TINY["bootstrap"]
        cfg["name"] = "demo-tiny"
    return cfg, skipped


def run_demo(
    out: str | os.PathLike = "demo-out",
    *,
    tiny: bool = False,
    quiet: bool = False,
    device: str | None = "cpu",
    optional: bool = True,
) -> DemoResult:
    """Write ``OUT/demo.yaml`` and run it as a study into ``OUT``; returns the report and main table."""
    import time

    from cxrbench.report import main_table_text
    from cxrbench.study.gather import gather_results
    from cxrbench.study.load import load_study
    from cxrbench.study.plan import build_plan
    from cxrbench.study.runner import run_study

    t0 = time.perf_counter()
    out = Path(out).resolve()
    cfg, skipped = demo_config(tiny=tiny, optional=optional)
    path = out / DEMO_CONFIG
    # `out: .` makes the file name its own folder: `cxrbench study run OUT/demo.yaml` finds every step done
    cfg = {"name": cfg.pop("name"), "out": ".", **cfg}
    text = DEMO_HEADER + f"; rerun with: cxrbench study run {path}\n" + yaml.safe_dump(cfg, sort_keys=False)
    current = None
    if path.is_file():
        current = read_text(path, "demo config")
        if not current.startswith(DEMO_HEADER):
            raise InputError("demo.yaml in the output folder was not written by `cxrbench demo` and would "
                             "be replaced", where=str(path), fix="choose another --out for the demo")
    if not path.is_file() or current != text:
        atomic_write_text(path, text)
    study = load_study(path, out=out)
    summary = run_study(study, quiet=quiet, device=device)
    res = gather_results(build_plan(study))
    return DemoResult(
        out=out,
        report=study.layout.report_html,
        config=path,
        table=main_table_text(res),
        skipped=skipped,
        executed=len(summary.executed),
        seconds=time.perf_counter() - t0,
    )
