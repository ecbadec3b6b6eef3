"""Cost of cxrbench's safe, strict, offline model creation versus a bare timm load of the same file.

Baseline (same run, same file): ``timm.create_model(arch, pretrained=True, num_classes=K, img_size=S,
pretrained_cfg_overlay={'file': path})``, which is timm's own local-file path (non-strict head swap, no
cache lookup, no header check, no seeded head). cxrbench: ``create_model(init, K, image_size=S)`` from a
fake Hugging Face cache with ``HF_HUB_OFFLINE=1``. Random weights of the real architecture are used.

    python bench/model_load.py                          # dinov2-vitb14 at 224, 5 repeats
    python bench/model_load.py --init dinov2-vits14 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _put_in_hub(cache: Path, repo: str, weights: Path) -> None:
    snapshot = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    os.link(weights, snapshot / "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="dinov2-vitb14", help="a registered init name")
    parser.add_argument("--num-classes", type=int, default=14)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import timm
    import torch

    from cxrbench.models import build, registry
    from cxrbench.models.safeload import save_state_dict

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    spec = registry.get_init(args.init)
    with tempfile.TemporaryDirectory(prefix="cxrbench-bench-") as tmp:
        tmp = Path(tmp)
        source = timm.create_model(spec.timm_name, num_classes=0, **dict(spec.timm_kwargs))
        weights = tmp / "model.safetensors"
        save_state_dict(source.state_dict(), weights)
        n_params = sum(p.numel() for p in source.parameters())
        del source
        _put_in_hub(tmp / "hub", spec.hf_repo, weights)
        os.environ.update(HF_HUB_CACHE=str(tmp / "hub"), CXRBENCH_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1")

        size_kw = {"img_size": args.image_size} if spec.fixed_input_size else {}

        def bare() -> None:
            timm.create_model(
                spec.timm_name,
                pretrained=True,
                num_classes=args.num_classes,
                pretrained_cfg_overlay={"file": str(weights), "custom_load": False},
                **size_kw,
                **dict(spec.timm_kwargs),
            )

        def ours() -> None:
            build.create_model(args.init, args.num_classes, image_size=args.image_size)

        bare(), ours()  # warm-up: imports, allocator, page cache
        times: dict[str, list[float]] = {"timm": [], "cxrbench": []}
        for i in range(args.repeats):
            order = (("timm", bare), ("cxrbench", ours))
            for name, fn in order if i % 2 == 0 else order[::-1]:  # alternate: no order bias
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    base, mine = statistics.median(times["timm"]), statistics.median(times["cxrbench"])
    print(
        f"init {args.init} ({spec.timm_name}, {n_params / 1e6:.1f}M params), {args.num_classes} classes, "
        f"{args.image_size} px, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"  bare timm local-file load : {base:.3f} s")
    print(f"  cxrbench create_model     : {mine:.3f} s")
    print(f"  ratio cxrbench / timm     : {mine / base:.3f}x")


if __name__ == "__main__":
    main()
