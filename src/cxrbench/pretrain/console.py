"""What a pretraining run prints at start: model, views, data (with the held-out count), steps, loss."""

from __future__ import annotations


def print_summary(
    cfg, env, device, nets, selection, micro, steps_per_epoch, sched, precision, progress, resume
) -> None:
    from cxrbench.common.progress import console

    info = nets.info
    n_params = sum(p.numel() for p in nets.student.backbone.parameters())
    s = selection.summary()
    per = ", ".join(f"{k} {v:,}" for k, v in s["per_dataset"].items())
    lines = [
        f"[bold]cxrbench pretrain[/] -> {cfg.out}"
        + (f"  (resuming at step {progress['step']}, epoch {progress['epoch'] + 1})" if resume else ""),
        f"  model   {info.init} ({info.arch}), {n_params / 1e6:.2f}M backbone params; views 2 x "
        f"{nets.global_size} px + {cfg.local_crops} x {nets.local_size} px",
        f"  data    {s['images']:,} train images of {s['patients']:,} patients ({per}); "
        f"{s['dropped']['held_out_images']:,} left out (val/test patients), sha256 {s['images_sha256'][:12]}",
        f"  steps   batch {cfg.batch_size} = {env.world_size} process(es) x {micro} images x "
        f"{cfg.grad_accum} micro-step(s); {steps_per_epoch:,} steps/epoch, {sched.total_steps:,} in "
        f"{cfg.epochs} epochs",
        f"  loss    DINO ({cfg.centering}, {cfg.out_dim} prototypes)"
        + (f" + iBOT x{cfg.ibot_weight:g}" if cfg.ibot else "")
        + (f" + KoLeo x{cfg.koleo_weight:g}" if cfg.koleo_weight else "")
        + f"; momentum {cfg.momentum:g}->{cfg.momentum_end:g}; lr {cfg.lr:g}; {precision} on {device}",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
