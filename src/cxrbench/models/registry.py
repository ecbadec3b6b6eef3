"""The registry of named initializations: one frozen :class:`InitSpec` per name (timm
``pretrained_cfg`` style: weight source, architecture, mean/std, input size, licence, paper).

:data:`INITS` is the table, :func:`list_inits` the lister (shell wildcards), :func:`get_init` the
lookup with closest-name errors. :data:`RANDOM_ALIASES` are the short architectures accepted after
``random-``. Every other spelling of an init is parsed by :mod:`cxrbench.models.resolve`.
"""


from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.models import store as wt

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


INCEPTION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)


INCEPTION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


_DINOV2_PAPER = (
    "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024, arXiv:2304.07193"
)


_REG_PAPER = "Darcet et al., Vision Transformers Need Registers, ICLR 2024, arXiv:2309.16588"


_AUGREG_PAPER = (
    "Steiner et al., How to train your ViT? Data, Augmentation, and Regularization in Vision "
    "Transformers, TMLR 2022, arXiv:2106.10270"
)


_DINOV3_PAPER = "Simeoni et al., DINOv3, arXiv:2508.10104 (2025)"


@dataclass(frozen=True)
class InitSpec:
    """One registered initialization (timm ``pretrained_cfg`` style; frozen).

    ``image_size`` is the pretraining resolution in pixels (the default when ``create_model`` gets
    no ``image_size``); ``patch_size`` is None for convolutional networks; ``timm_kwargs`` are the
    build options the init needs (e.g. DINOv3 ViTs pool the CLS token as upstream); ``files`` are the
    weight files of ``hf_repo``, preferred first.

    ``pretrained_on`` names the datasets the weights were pretrained on, with the index's dataset
    names for the chest-radiograph sets (``nih``, ``chexpert``, ``mimic``, ``padchest``, ``vindr``;
    others as their usual short name): the contamination audit warns when an init is tested on one
    of them. ``convert`` is the format of ``hf_repo`` when it is not timm's (``hf-dinov2``: Hugging
    Face transformers Dinov2/Dinov2WithRegisters, converted to timm by
    :mod:`cxrbench.models.convert` on ``weights fetch``/``import``; ``open-clip`` and ``hf-siglip``:
    vision-language models whose image tower is converted to timm and whose text tower is kept beside
    it, :mod:`cxrbench.models.vlm_store`; ``extra_files`` are the configs
    the conversion reads, and mean/std/size/build options then come from them); ``weights_key``
    names the converted copy in the store. ``pretraining_list`` is the file of ``hf_repo`` listing
    the pretraining images, when the authors publish one (for ``cxrbench audit``).
    """

    name: str
    timm_name: str
    family: str
    architecture: str
    patch_size: int | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    paper: str
    hf_repo: str
    files: tuple[str, ...] = wt.HF_WEIGHT_FILES
    timm_kwargs: tuple[tuple[str, Any], ...] = ()
    fixed_input_size: bool = True
    url: str | None = None
    notes: str = ""
    pretrained_on: tuple[str, ...] = ()
    convert: str | None = None
    extra_files: tuple[str, ...] = ()
    weights_key: str | None = None
    pretraining_list: str | None = None

    @property
    def arch(self) -> str:
        """The timm architecture without the tag."""
        return self.timm_name.split(".", 1)[0]

    @property
    def pooling(self) -> str:
        """The pooling the model uses (an override from ``timm_kwargs`` or the architecture's default)."""
        return dict(self.timm_kwargs).get("global_pool", "token" if self.patch_size else "avg")

    @property
    def weight_source(self) -> wt.WeightSource:
        """Where its weights come from (see :mod:`cxrbench.models.store`)."""
        return wt.WeightSource(key=self.weights_key or self.timm_name, hf_repo=self.hf_repo, files=self.files,
                               url=self.url, extra_files=self.extra_files, convert=self.convert)


def _dinov2(letter: str, size: str, width: str, reg: bool) -> InitSpec:
    timm_name = f"vit_{size}_patch14{'_reg4' if reg else ''}_dinov2.lvd142m"
    return InitSpec(
        name=f"dinov2-vit{letter}14{'-reg' if reg else ''}",
        timm_name=timm_name,
        family="dinov2",
        architecture=f"ViT-{letter.upper() if letter != 'g' else 'g'}/14{' +4 registers' if reg else ''}",
        patch_size=14,
        image_size=518,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="apache-2.0",
        paper=_DINOV2_PAPER + ("; " + _REG_PAPER if reg else ""),
        hf_repo=f"timm/{timm_name}",
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{letter}14/dinov2_vit{letter}14"
        f"{'_reg4' if reg else ''}_pretrain.pth",
        notes=f"self-supervised on LVD-142M (142M curated natural images); {width}",
        pretrained_on=("lvd-142m",),
    )


def _dinov3_vit(letter: str, size: str, width: str, plus: bool = False) -> InitSpec:
    timm_name = f"vit_{size}{'_plus' if plus else ''}_patch16_dinov3.lvd1689m"
    return InitSpec(
        name=f"dinov3-vit{letter}16{'plus' if plus else ''}",
        timm_name=timm_name,
        family="dinov3",
        architecture=f"ViT-{letter.upper()}{'+' if plus else ''}/16",
        patch_size=16,
        image_size=256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="dinov3-license",
        paper=_DINOV3_PAPER,
        hf_repo=f"timm/{timm_name}",
        timm_kwargs=(("global_pool", "token"),),
        notes=f"distilled from DINOv3 7B on LVD-1689M; RoPE + 4 registers; CLS pooling as upstream; {width}",
        pretrained_on=("lvd-1689m",),
    )


def _dinov3_convnext(letter: str, size: str) -> InitSpec:
    timm_name = f"convnext_{size}.dinov3_lvd1689m"
    return InitSpec(
        name=f"dinov3-convnext-{letter}",
        timm_name=timm_name,
        family="dinov3",
        architecture=f"ConvNeXt-{letter.upper()}",
        patch_size=None,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="dinov3-license",
        paper=_DINOV3_PAPER,
        hf_repo=f"timm/{timm_name}",
        fixed_input_size=False,
        notes="distilled from DINOv3 7B on LVD-1689M; average pooling",
        pretrained_on=("lvd-1689m",),
    )


def _augreg(name: str, tag: str, notes: str, pretrained_on: tuple[str, ...]) -> InitSpec:
    timm_name = f"vit_base_patch16_224.{tag}"
    return InitSpec(
        name=name,
        timm_name=timm_name,
        family="imagenet",
        architecture="ViT-B/16",
        patch_size=16,
        image_size=224,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        license="apache-2.0",
        paper=_AUGREG_PAPER,
        hf_repo=f"timm/{timm_name}",
        notes=notes,
        pretrained_on=pretrained_on,
    )


_RAD_DINO_PAPER = (
    "Perez-Garcia et al., Exploring scalable medical image encoders beyond text supervision, "
    "Nature Machine Intelligence 2025, arXiv:2401.10815"
)


_CXFORMER_PAPER = (
    "Al Mahrooqi et al., Empirical Analysis of Scaling Vision Foundation Models for Chest X-rays, "
    "MIDL 2025, PMLR 301"
)


# The five public sets RAD-DINO and CXformer were pretrained on (model cards); BRAX has no adapter.
_CXR5 = ("mimic", "chexpert", "nih", "padchest", "brax")


def _domain_ssl(name: str, timm_name: str, family: str, architecture: str, repo: str, license: str,
                paper: str, mean: tuple[float, float, float], std: tuple[float, float, float], notes: str,
                pretraining_list: str | None = None) -> InitSpec:
    """A chest-radiograph foundation model published in Hugging Face transformers' Dinov2 format."""
    return InitSpec(
        name=name,
        timm_name=timm_name,
        family=family,
        architecture=architecture,
        patch_size=14,
        image_size=518,
        mean=mean,
        std=std,
        license=license,
        paper=paper,
        hf_repo=repo,
        files=("model.safetensors",),
        notes=notes,
        pretrained_on=_CXR5,
        convert="hf-dinov2",
        extra_files=("config.json", "preprocessor_config.json"),
        weights_key=f"{timm_name}.{name.replace('-', '_')}",
        pretraining_list=pretraining_list,
    )


_CLIP_PAPER = (
    "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
)


_BIOMEDCLIP_PAPER = (
    "Zhang et al., A Multimodal Biomedical Foundation Model Trained from Fifteen Million Image-Text Pairs, "
    "NEJM AI 2025, arXiv:2303.00915"
)


_SIGLIP_PAPER = "Zhai et al., Sigmoid Loss for Language Image Pre-Training, ICCV 2023, arXiv:2303.15343"


_SIGLIP2_PAPER = "Tschannen et al., SigLIP 2, arXiv:2502.14786 (2025)"


_MEDGEMMA_PAPER = "Sellergren et al., MedGemma Technical Report, arXiv:2507.05201 (2025) (MedSigLIP)"


_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# Build options of the converted towers before a conversion has recorded the model's own (random- arms).
_VLM_KWARGS: Mapping[str, tuple[tuple[str, Any], ...]] = {
    "clip": (("act_layer", "quick_gelu"), ("fc_norm", False), ("global_pool", "token")),
    "biomedclip": (),
    "siglip": (("act_layer", "gelu_tanh"), ("class_token", False), ("global_pool", "map"),
               ("fc_norm", False)),
}


_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _vlm(name: str, timm_name: str, family: str, architecture: str, repo: str, license: str, paper: str,
         patch: int, size: int, notes: str, pretrained_on: tuple[str, ...]) -> InitSpec:
    """A vision-language model's image tower: open_clip format (CLIP, BiomedCLIP) or transformers SigLIP
    format (the SigLIP family), converted to timm with its text tower beside it
    (:mod:`cxrbench.models.vlm_store`)."""
    open_clip = family in ("clip", "biomedclip")
    return InitSpec(
        name=name,
        timm_name=timm_name,
        family=family,
        architecture=architecture,
        patch_size=patch,
        image_size=size,
        mean=_OPENAI_CLIP_MEAN if open_clip else INCEPTION_MEAN,
        std=_OPENAI_CLIP_STD if open_clip else INCEPTION_STD,
        license=license,
        paper=paper,
        hf_repo=repo,
        files=_OPEN_CLIP_FILES if open_clip else ("model.safetensors",),
        timm_kwargs=_VLM_KWARGS[family if open_clip else "siglip"],
        notes=notes,
        pretrained_on=pretrained_on,
        convert="open-clip" if open_clip else "hf-siglip",
        extra_files=("open_clip_config.json",) if open_clip else ("config.json",),
        weights_key=f"{timm_name}.{name.replace('-', '_')}",
    )


_SPECS: tuple[InitSpec, ...] = (
    *(
        _dinov2(letter, size, width, reg)
        for reg in (False, True)
        for letter, size, width in (
            ("s", "small", "22M params"),
            ("b", "base", "86M params"),
            ("l", "large", "304M params"),
            ("g", "giant", "1.1B params, SwiGLU"),
        )
    ),
    _augreg(
        "imagenet21k-vitb16",
        "augreg_in21k",
        "supervised on ImageNet-21k (AugReg); the reference study's ImageNet arm",
        ("imagenet-21k",),
    ),
    _augreg(
        "imagenet1k-vitb16",
        "augreg_in21k_ft_in1k",
        "the same AugReg ImageNet-21k run, fine-tuned on ImageNet-1k",
        ("imagenet-21k", "imagenet-1k"),
    ),
    *(
        _dinov3_vit(letter, size, width)
        for letter, size, width in (
            ("s", "small", "21M params"),
            ("b", "base", "86M params"),
            ("l", "large", "300M params"),
        )
    ),
    # the larger DINOv3 backbones (SwiGLU MLPs); too large to fine-tune on one GPU at the top end, they are
    # compared frozen: --adaptation linear|knn (embeddings computed once in bf16, docs/training.md)
    _dinov3_vit("s", "small", "29M params, SwiGLU", plus=True),
    _dinov3_vit("h", "huge", "840M params, SwiGLU; frozen (linear/knn) or LoRA on one GPU", plus=True),
    _dinov3_vit("7b", "7b", "6.7B params, SwiGLU, the DINOv3 teacher: frozen only (linear/knn); 27 GB "
                "of fp32 weights, on disk and in memory (bf16 autocast for the embedding pass)"),
    *(
        _dinov3_convnext(letter, size)
        for letter, size in (("t", "tiny"), ("s", "small"), ("b", "base"), ("l", "large"))
    ),
    _domain_ssl(
        "rad-dino", "vit_base_patch14_dinov2", "rad-dino", "ViT-B/14", "microsoft/rad-dino", "mit",
        _RAD_DINO_PAPER, (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583),
        "DINOv2 ViT-B/14 continued on ~880k chest radiographs (MIMIC-CXR, CheXpert, NIH ChestX-ray14, "
        "PadChest, BRAX; MAIRA's val/test images excluded); transformers format, converted to timm; "
        "lists its images in training_images.csv",
        pretraining_list="training_images.csv",
    ),
    *(
        _domain_ssl(
            f"cxformer-vit{letter}14", f"vit_{size}_patch14_reg4_dinov2", "cxformer",
            f"ViT-{letter.upper()}/14 +4 registers", f"m42-health/CXformer-{size}", "cc-by-nc-4.0",
            _CXFORMER_PAPER, IMAGENET_MEAN, IMAGENET_STD,
            f"DINOv2 with registers ({size}) continued on 600k+ frontal chest radiographs of the official "
            "training splits of CheXpert, MIMIC-CXR, PadChest, NIH-CXR8 and BRAX; transformers format, "
            "converted to timm (normalization and size from the repository's configs)",
        )
        for letter, size in (("b", "base"), ("s", "small"))
    ),
    # vision-language models: image towers converted to timm, text towers kept for zero-shot scoring
    _vlm("clip-vitb16", "vit_base_patch16_clip_224", "clip", "ViT-B/16",
         "timm/vit_base_patch16_clip_224.openai", "mit", _CLIP_PAPER, 16, 224,
         "OpenAI CLIP ViT-B/16 (QuickGELU), contrastive on 400M web image-text pairs; open_clip format",
         ("openai-wit-400m",)),
    _vlm("clip-vitl14", "vit_large_patch14_clip_224", "clip", "ViT-L/14",
         "timm/vit_large_patch14_clip_224.openai", "mit", _CLIP_PAPER, 14, 224,
         "OpenAI CLIP ViT-L/14 (QuickGELU), contrastive on 400M web image-text pairs; open_clip format",
         ("openai-wit-400m",)),
    _vlm("biomedclip-vitb16", "vit_base_patch16_224", "biomedclip", "ViT-B/16",
         "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "mit", _BIOMEDCLIP_PAPER, 16, 224,
         "CLIP on PMC-15M (15M figure-caption pairs from PubMed Central articles), PubMedBERT text tower "
         "(context 256); open_clip format with a timm ViT-B/16 trunk", ("pmc-15m",)),
    _vlm("siglip-vitb16", "vit_base_patch16_siglip_224", "siglip", "ViT-B/16",
         "google/siglip-base-patch16-224", "apache-2.0", _SIGLIP_PAPER, 16, 224,
         "SigLIP (sigmoid loss) on WebLI, attention-pooling head; transformers format", ("webli",)),
    _vlm("siglip2-vitb16", "vit_base_patch16_siglip_224", "siglip2", "ViT-B/16",
         "google/siglip2-base-patch16-224", "apache-2.0", _SIGLIP2_PAPER, 16, 224,
         "SigLIP 2 at fixed resolution on WebLI (multilingual Gemma tokenizer); transformers format",
         ("webli",)),
    _vlm("siglip-so400m14", "vit_so400m_patch14_siglip_224", "siglip", "So400m/14",
         "google/siglip-so400m-patch14-384", "apache-2.0", _SIGLIP_PAPER, 14, 384,
         "SigLIP shape-optimized 400M ViT at 384 px on WebLI; transformers format", ("webli",)),
    _vlm("medsiglip-448", "vit_so400m_patch14_siglip_224", "medsiglip", "So400m/14", "google/medsiglip-448",
         "health-ai-developer-foundations (gated)", _MEDGEMMA_PAPER, 14, 448,
         "SigLIP So400m tuned on de-identified medical image-text pairs (chest radiographs with their "
         "reports among them) plus natural images; the vision encoder of MedGemma; gated: accept the "
         "HAI-DEF terms on the hub first", ("mimic", "chexpert", "webli")),
)


INITS: Mapping[str, InitSpec] = {s.name: s for s in _SPECS}
"""Every registered initialization by name."""


RANDOM_ALIASES: Mapping[str, str] = {
    "vit-tiny": "vit_tiny_patch16_224",  # ViT-Ti/16, 5.7M params
    "vit-small": "vit_small_patch16_224",  # ViT-S/16, 22M
    "vit-base": "vit_base_patch16_224",  # ViT-B/16, 86M (the study's architecture)
    "vit-test": "test_vit",  # 0.3M params, 64-d, 6 blocks, patch 16: for tests
    "convnext-test": "test_convnext",  # 0.4M params: for tests
    "clip-test": "vit_base_patch16_clip_224",  # tiny open_clip CLIP, image tower as timm (models/vlm_tiny.py)
    "siglip-test": "vit_base_patch16_siglip_224",  # tiny transformers SigLIP, image tower as timm
}
"""Short names accepted after ``random-``."""

RANDOM_NOTES: Mapping[str, str] = {
    "vit-tiny": "ViT-Ti/16, 5.7M parameters: trains on a CPU",
    "vit-small": "ViT-S/16, 22M",
    "vit-base": "ViT-B/16, 86M: the study's architecture",
    "vit-test": "0.3M parameters, 6 blocks of width 64: seconds on a CPU (tests, demos)",
    "convnext-test": "0.4M parameters: tests",
    "clip-test": "tiny open_clip CLIP (image + text tower, width 32, 32 px): vision-language tests, demos",
    "siglip-test": "tiny transformers SigLIP (image + text tower, width 32, 32 px): vision-language tests",
}
"""What each random alias is, for ``cxrbench weights list``."""


def registered_inits(pattern: str | None = None) -> list[str]:
    """The registered init names (:data:`INITS`), optionally filtered by a shell wildcard."""
    return [n for n in INITS if fnmatch.fnmatchcase(n, pattern)] if pattern else list(INITS)


def list_inits(pattern: str | None = None, *, timm: bool | None = None) -> list[str]:
    """Every init name a user can pass, optionally filtered by a shell wildcard, as timm's
    ``list_models`` lists its models.

    Args:
        pattern: a shell wildcard (``"dinov2*"``, ``"random*"``, ``"*-reg"``, ``"timm:vit_base*"``);
            None lists everything below.
        timm: also ask timm (imports it, hence torch): ``random-<architecture>`` for every timm
            architecture and ``timm:<model>.<tag>`` for every pretrained tag timm knows. None (default)
            asks timm only for a pattern that starts with ``timm:``.

    Returns:
        The registered inits (``dinov2-vitb14``, ... :data:`INITS`), then the random ones: the short
        aliases (``random-vit-test``, ``random-vit-tiny``, ... :data:`RANDOM_ALIASES`) and
        ``random-<registered init>`` (its architecture, size and normalization with random weights);
        with ``timm``, timm's names after them. ``checkpoint:PATH``, ``hf-hub:ORG/NAME`` and a study's
        ``domain:``/``ssl:`` arms name files and runs, so they are not listed.

    Example::

        >>> cxrbench.list_inits("random-vit-*")
        ['random-vit-tiny', 'random-vit-small', 'random-vit-base', 'random-vit-test']
        >>> cxrbench.list_inits("timm:vit_base_patch16_224.augreg*")   # doctest: +SKIP
        ['timm:vit_base_patch16_224.augreg2_in21k_ft_in1k', 'timm:vit_base_patch16_224.augreg_in1k', ...]
    """
    names = [*INITS, *(f"random-{a}" for a in RANDOM_ALIASES), *(f"random-{n}" for n in INITS)]
    out = [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names
    if timm if timm is not None else bool(pattern and pattern.startswith("timm:")):
        import timm as timm_lib

        timm_names = [f"random-{m}" for m in timm_lib.list_models()]
        timm_names += [f"timm:{m}" for m in timm_lib.list_models(pretrained=True)]
        seen = set(out)
        out += [n for n in timm_names if n not in seen and (not pattern or fnmatch.fnmatchcase(n, pattern))]
    return out


def get_init(name: str) -> InitSpec:
    """The registered :class:`InitSpec` called ``name`` (InputError with the closest names otherwise)."""
    spec = INITS.get(name.strip().lower())
    if spec is None:
        raise _unknown_init(name)
    return spec


def _unknown_init(name: str) -> InputError:
    import timm

    if timm.is_model(name.split(".", 1)[0]):
        return InputError(
            f"{name!r} is a timm model, not a registered initialization",
            where="init",
            fix=f"say where its weights come from: timm:{name} (timm's pretrained weights) or "
            f"random-{name.split('.', 1)[0]} (no pretrained weights)",
        )
    names = list(INITS) + [f"random-{a}" for a in RANDOM_ALIASES]
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
    starts = [n for n in INITS if n.startswith(name.lower())] if name else []
    if len(starts) > 1:
        what = f"initialization {name!r} is ambiguous: it could be {', '.join(starts)}"
    else:
        what = f"unknown initialization {name!r}" + (f"; closest: {', '.join(close)}" if close else "")
    return InputError(
        what,
        where="init",
        fix="use a registered name (`cxrbench weights list`) or a prefix: timm:<model>[.tag], "
        "checkpoint:<path>, random-<arch>, hf-hub:<org>/<repo>",
    )

