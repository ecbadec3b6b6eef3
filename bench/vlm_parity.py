"""Vision-language image towers converted to timm versus the library's own forward, per family.

For each family a model of the real architecture (random weights, perturbed so that norms and biases
are not trivial: real weights cannot be downloaded here) is built with its library and written as the
library publishes it; cxrbench then builds it through ``--init local-dir:FOLDER`` (the conversion that
``weights import``/``fetch`` store) and the outputs are compared on the same images:

- ``open_clip ViT``: OpenAI CLIP ViT-B/16 architecture (``ViT-B-16-quickgelu``), ``encode_image``;
- ``open_clip timm trunk``: BiomedCLIP's architecture (timm ``vit_base_patch16_224`` trunk, linear
  projection, a BERT-base text tower), ``encode_image``;
- ``open_clip SigLIP timm trunk``: open_clip's ``ViT-B-16-SigLIP`` (timm ``vit_base_patch16_siglip_224``
  trunk, attention pooling, no projection), ``encode_image``;
- ``transformers SigLIP``: ``SiglipModel`` with transformers' default (ViT-B/16, 224) configuration,
  ``vision_model(...).pooler_output`` and every token of ``last_hidden_state``.

Printed per family: max |difference| of the joint-space embedding before normalisation, the same relative
to the largest reference value, and of the L2-normalised embedding (what zero-shot scoring compares).

    python bench/vlm_parity.py            # real architectures, 4 images (about a minute on 2 cores)
    python bench/vlm_parity.py --tiny     # the tiny test models (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def _perturb(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_" not in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


def _save_open_clip(folder: Path, cfg: dict, model) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )


def _families(root: Path, tiny: bool):
    """Yield (label, folder, library image-embedding function, input size)."""
    import open_clip
    import torch
    import transformers

    from cxrbench.models.vlm_tiny import TINY_SIGLIP_PREPROCESSOR, save_tiny

    if tiny:
        for name, label in (("clip-test", "open_clip ViT"), ("siglip-test", "transformers SigLIP")):
            t = save_tiny(name, root / name, seed=0)
            fn = (
                t.model.encode_image
                if name == "clip-test"
                else (lambda x, m=t.model: m.vision_model(pixel_values=x))
            )
            yield label, root / name, fn, 32
        return
    torch.manual_seed(0)
    cfg = {"model_cfg": open_clip.get_model_config("ViT-B-16-quickgelu"), "preprocess_cfg": {}}
    clip = open_clip.CLIP(**cfg["model_cfg"]).eval()
    _perturb(clip, 1)
    _save_open_clip(root / "clip", cfg, clip)
    yield "open_clip ViT (CLIP ViT-B/16)", root / "clip", clip.encode_image, 224

    hf_text = root / "biomed" / "hf_text"
    transformers.BertConfig().save_pretrained(str(hf_text))
    model_cfg = {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": "org/bert",
            "hf_tokenizer_name": "org/bert",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    }
    build = json.loads(json.dumps(model_cfg))
    build["text_cfg"].update(hf_model_name=str(hf_text), hf_model_pretrained=False)
    biomed = open_clip.CustomTextCLIP(**build).eval()
    _perturb(biomed, 2)
    _save_open_clip(root / "biomed", {"model_cfg": model_cfg}, biomed)
    yield "open_clip timm trunk (BiomedCLIP ViT-B/16)", root / "biomed", biomed.encode_image, 224

    cfg = {"model_cfg": open_clip.get_model_config("ViT-B-16-SigLIP"), "preprocess_cfg": {}}
    build = {k: v for k, v in cfg["model_cfg"].items() if k != "custom_text"}
    osig = open_clip.CustomTextCLIP(**build).eval()
    _perturb(osig, 4)
    _save_open_clip(root / "osiglip", cfg, osig)
    yield "open_clip SigLIP timm trunk (ViT-B-16-SigLIP)", root / "osiglip", osig.encode_image, 224

    siglip = transformers.SiglipModel(transformers.SiglipConfig()).eval()
    _perturb(siglip, 3)
    siglip.save_pretrained(str(root / "siglip"))
    pre = {**TINY_SIGLIP_PREPROCESSOR, "size": {"height": 224, "width": 224}}
    (root / "siglip" / "preprocessor_config.json").write_text(json.dumps(pre))
    yield (
        "transformers SigLIP (ViT-B/16)",
        root / "siglip",
        lambda x: siglip.vision_model(pixel_values=x),
        224,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny test models instead of real architectures"
    )
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from cxrbench.models import safeload
    from cxrbench.models.build import create_model
    from cxrbench.models.vlm import image_projection
    from cxrbench.models.vlm_folder import read_folder

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    header = f"{'family':45s} {'max|d| embedding':>17s} {'relative':>10s} {'max|d| normalised':>18s}"
    print(f"{header} {'tokens':>10s}")
    with tempfile.TemporaryDirectory(prefix="cxrbench-vlm-") as tmp:
        for label, folder, library, size in _families(Path(tmp), args.tiny):
            model, _ = create_model(f"local-dir:{folder}", 0)  # head-less: the pooled features
            lib = read_folder(folder, "bench")
            weight, bias = image_projection(lib.family, safeload.load_state_dict(lib.weights))
            x = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                tokens = model.eval().forward_features(x)
                ours = model.forward_head(tokens, pre_logits=True)
                ours = F.linear(ours, weight, bias) if weight is not None else ours
                ref = library(x)
                ref_tokens = getattr(ref, "last_hidden_state", None)
                ref = ref.pooler_output if ref_tokens is not None else ref
            diff = (ours - ref).abs().max().item()
            norm = (F.normalize(ours, dim=-1) - F.normalize(ref, dim=-1)).abs().max().item()
            tok = (
                f"{(tokens - ref_tokens).abs().max().item():10.2e}"
                if ref_tokens is not None
                else f"{'-':>10s}"
            )
            print(f"{label:45s} {diff:17.2e} {diff / ref.abs().max().item():10.2e} {norm:18.2e} {tok}")


if __name__ == "__main__":
    main()
