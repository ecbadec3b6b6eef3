"""What a training run prints: the summary at start (model, data, steps, optimizer, FLOPs) and
the progress bar (loss, images/s, ETA; epoch lines when stderr is not a terminal)."""

from __future__ import annotations

import torch
from torch import nn

from cxrbench.common.progress import console
from cxrbench.train.optim import layer_scales


def forward_gflops(model: nn.Module, eval_tf, cache_size: int, device: torch.device) -> float | None:
    """Forward GFLOPs for one image (FlopCounterMode on a single-image batch); None if it fails."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        x = eval_tf(torch.zeros((1, cache_size, cache_size), dtype=torch.uint8, device=device))
        was = model.training
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        model.train(was)
        return counter.get_total_flops() / 1e9
    except Exception:  # a nicety: never fail a run over it
        return None


def model_text(info) -> str:
    """``init (arch, weights FILE)``; a random init names the bare architecture (timm's default tag,
    e.g. .augreg_in21k_ft_in1k, would suggest pretrained weights that were never loaded)."""
    return (f"{info.init} ({info.arch}, weights {info.weights})" if info.pretrained
            else f"{info.init} ({info.arch.split('.', 1)[0]}, random init: no weights loaded)")


def data_text(train_ds, val_ds) -> str:
    """``N train / M val images, K findings, cache S px (resize, equalized)``."""
    return (f"{len(train_ds):,} train / {len(val_ds):,} val images, {len(train_ds.findings)} findings, "
            f"cache {train_ds.size} px ({train_ds.recipe.get('resize')}, "
            f"{'equalized' if train_ds.recipe.get('equalize') else 'not equalized'})")


def print_summary(cfg, env, device, info, image_size, train_ds, val_ds, micro, steps_per_epoch, total_steps,
                  precision, n_params, n_trainable, groups, gflops, overlap_note, progress, resume,
                  adaptation: str | None = None) -> None:
    scales = layer_scales(groups)
    lines = [
        f"[bold]cxrbench train[/] -> {cfg.out}" + (f"  (resuming at step {progress['step']}, "
                                                   f"epoch {progress['epoch'] + 1})" if resume else ""),
        f"  model   {model_text(info)}, {n_params / 1e6:.2f}M params, "
        f"{n_trainable / 1e6:.2f}M trainable"
        f"{' (linear probe)' if cfg.linear_probe else ''}, {image_size} px"
        + (f", {gflops:.3g} GFLOPs/image fwd" if gflops else ""),
        f"  adapt   {adaptation or cfg.adaptation}",
        f"  data    {data_text(train_ds, val_ds)}",
        f"  steps   batch {cfg.batch_size} = {env.world_size} process(es) x {micro} images x "
        f"{cfg.grad_accum} micro-step(s); {steps_per_epoch:,} steps/epoch, {total_steps:,} in "
        f"{cfg.epochs} epochs "
        f"({len(train_ds) * cfg.epochs:,} images)",
        f"  optim   AdamW lr {cfg.lr:g} ({cfg.schedule}, warmup {cfg.warmup_epochs:g} ep), "
        f"wd {cfg.weight_decay:g}"
        + (f", layer decay {cfg.layer_decay:g} (lr scales {scales[0]:.3g}..{scales[-1]:.3g})"
           if cfg.layer_decay else "")
        + (f", clip {cfg.clip_grad:g}" if cfg.clip_grad else "") + f"; {precision} on {device}"
        + (", compiled" if cfg.compile else ""),
    ]
    changes = train_ds.label_changes or {}
    if changes.get("budget"):
        b = changes["budget"]
        lines.append(f"  labels  budget {b['fraction']:g}: {b['patients']:,} of {b['of_patients']:,} "
                     f"training patients ({b['images']:,} images), nested and stratified "
                     f"(seed {changes['seed']})")
    if changes.get("noise"):
        n = changes["noise"]
        lines.append(f"  labels  noise {n['rate']:g}: {sum(n['flipped'].values()):,} training labels flipped "
                     f"(seed {changes['seed']})")
    if overlap_note:
        lines.append(f"  init    {overlap_note}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


class ProgressBar:
    """Progress bar over all optimizer steps with loss, images/s and ETA; epoch lines when not a TTY."""

    def __init__(self, quiet: bool, total: int, done: int) -> None:
        from rich.progress import TextColumn

        from cxrbench.common.progress import make_progress

        self.quiet = quiet
        self._p = make_progress(quiet, TextColumn("loss {task.fields[loss]}"),
                                TextColumn("{task.fields[ips]} img/s"))
        self._task = self._p.add_task("train", total=total, completed=done, loss="-", ips="-")
        self._p.start()

    def epoch(self, epoch: int, epochs: int) -> None:
        self._p.update(self._task, description=f"epoch {epoch + 1}/{epochs}")

    def update(self, step: int, loss: float | None = None, ips: float | None = None) -> None:
        if loss is None:
            self._p.update(self._task, completed=step)
        else:
            self._p.update(self._task, completed=step, loss=f"{loss:.4f}", ips=f"{ips:,.0f}")

    def note(self, text: str) -> None:
        if not self.quiet:
            self._p.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self._p.stop()



def print_frozen_summary(cfg, env, device, info, image_size, train_ds, val_ds, n_params: int, adaptation: str,
                         precision: str, note: str | None) -> None:
    """The start summary of a run on cached embeddings (``--adaptation linear|knn``)."""
    lines = [
        f"[bold]cxrbench train[/] -> {cfg.out}",
        f"  model   {model_text(info)}, {n_params / 1e6:.2f}M params, frozen, {image_size} px",
        f"  adapt   {adaptation}",
        f"  data    {data_text(train_ds, val_ds)}",
        f"  device  {precision} on {device}, {env.world_size} process(es)",
    ]
    if note:
        lines.append(f"  init    {note}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
