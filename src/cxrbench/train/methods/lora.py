"""``lora``: low-rank adapters (LoRA, Hu et al., ICLR 2022) on a timm backbone, through peft, trained
with the head in the fine-tuning loop and merged into plain timm weights on save.

:func:`apply_lora` injects peft's LoRA layers in place (``peft.inject_adapter_in_model``: the model
stays the timm model, with ``get_classifier``, ``forward_features`` and friends) into the backbone's
attention and MLP projections, and freezes every other backbone weight; the head trains fully. Each
adapted ``W`` becomes ``W + (alpha / r) B A`` with ``A`` (``r x in``, Kaiming-uniform, drawn from the
run's seed) and ``B`` (``out x r``, zero), so training starts from the pretrained model.

Targets are module names' last components: by default every attention and MLP projection of a ViT
(timm ``VisionTransformer``: ``qkv``, ``proj``, ``fc1``, ``fc2``; ``Eva``/DINOv3: also ``q_proj``,
``k_proj``, ``v_proj``, SwiGLU's ``fc1_g``, ``fc1_x``) and a ConvNeXt's pointwise convolutions
(``mlp.fc1``, ``mlp.fc2``, linear layers in timm), never the patch embedding, the stem or the head.
ConvNeXt's depthwise ``conv_dw`` is refused: peft cannot merge LoRA into grouped convolutions.

:func:`merged_state_dict` returns plain timm weights (``W + delta`` under the original key names,
no adapter keys), so ``best.safetensors`` loads into ``timm.create_model(arch)`` and evaluation,
prediction and export need nothing of peft (a LoRA run scores like any run of the network it holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from cxrbench.common.errors import InputError
from cxrbench.train.methods.base import Adaptation, Method, Regime, count_params
from cxrbench.train.settings import MethodOptions, TrainSettings, comma_list

if TYPE_CHECKING:
    import torch
    from torch import nn


DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "q_proj", "k_proj", "v_proj", "proj", "fc1", "fc1_g", "fc1_x",
                                    "fc2")
EXCLUDED_PREFIXES: tuple[str, ...] = ("patch_embed", "stem")
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSpec:
    """Rank ``r``, scaling ``alpha`` (updates are scaled by ``alpha / r``), dropout on the adapter's
    input, and the target names (None: :data:`DEFAULT_TARGETS` present in the model)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LoraInfo:
    """What :func:`apply_lora` did: the adapted modules (full names), the target names they match,
    and the parameter counts (``adapter_params``; ``total_params`` of the model with adapters)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    modules: tuple[str, ...]
    adapter_params: int
    total_params: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_modules"] = len(self.modules)
        d["modules"] = list(self.modules)
        d["targets"] = list(self.targets)
        return d


def require_peft():
    """The peft module, or one InputError naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise InputError("adaptation lora needs the peft package", where="--adaptation lora",
                         fix="pip install 'cxrbench[lora]'") from None
    return peft


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = (clf,) if isinstance(clf, str) else tuple(clf)
    return tuple({n.split(".", 1)[0] for n in names})


def target_modules(model: nn.Module, targets: Sequence[str] | None = None,
                   ) -> tuple[list[str], tuple[str, ...]]:
    """``(full module names to adapt, the target names used)``; InputError for a target that matches
    nothing, a grouped convolution, or a model without any default target."""
    from torch import nn

    excluded = EXCLUDED_PREFIXES + _classifier_prefixes(model)
    candidates: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear | nn.Conv2d) and name and name.split(".", 1)[0] not in excluded:
            candidates[name] = mod
    last = {name: name.rsplit(".", 1)[-1] for name in candidates}
    available = sorted(set(last.values()))
    if targets:
        missing = [t for t in targets if t not in available]
        if missing:
            raise InputError(f"LoRA target(s) {', '.join(missing)} match no linear or convolution layer of "
                             f"{type(model).__name__}", where="--lora-targets",
                             fix=f"choose among {', '.join(available)}")
        wanted = tuple(targets)
    else:
        wanted = tuple(t for t in DEFAULT_TARGETS if t in available)
        if not wanted:
            raise InputError(f"{type(model).__name__} has none of the default LoRA targets "
                             f"({', '.join(DEFAULT_TARGETS)})", where="--adaptation lora",
                             fix=f"name them with --lora-targets (layers: {', '.join(available)})")
    names = [n for n in candidates if last[n] in wanted]
    grouped = [n for n in names if isinstance(conv := candidates[n], nn.Conv2d) and conv.groups > 1]
    if grouped:
        raise InputError(f"LoRA cannot be merged into grouped (depthwise) convolutions such as {grouped[0]}",
                         where="--lora-targets",
                         fix="leave out " + ", ".join(sorted({last[n] for n in grouped}))
                             + " (for a ConvNeXt adapt the pointwise layers fc1,fc2)")
    return names, wanted


def apply_lora(model: nn.Module, spec: LoraSpec, *, seed: int = 0) -> LoraInfo:
    """Inject LoRA adapters into ``model`` in place and freeze everything else (the head included:
    the caller unfreezes what it trains). Adapter weights are drawn from ``seed``; the global RNG
    is left untouched."""
    import torch

    peft = require_peft()
    names, wanted = target_modules(model, spec.targets)
    config = peft.LoraConfig(r=int(spec.rank), lora_alpha=float(spec.alpha), lora_dropout=float(spec.dropout),
                             target_modules=names, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    model.requires_grad_(False)
    adapters = 0
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
            adapters += p.numel()
    return LoraInfo(rank=int(spec.rank), alpha=float(spec.alpha), dropout=float(spec.dropout), targets=wanted,
                    modules=tuple(names), adapter_params=adapters,
                    total_params=sum(p.numel() for p in model.parameters()))


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """The peft LoRA layers of ``model`` by module name (empty for a model without adapters)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain timm weights (CPU, contiguous): each adapted layer's ``W + (alpha/r) B A`` under its
    original key, adapter keys dropped. A model without adapters gives its own state dict."""
    import torch

    with torch.no_grad():
        return _merged(model)


def _merged(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    for name, layer in layers.items():
        base = layer.get_base_layer()
        delta = layer.get_delta_weight(ADAPTER_NAME) if ADAPTER_NAME in layer.lora_A else 0
        out[f"{name}.weight"] = base.weight + delta
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


# --- the method --------------------------------------------------------------------------------------

class LoraOptions(MethodOptions):
    """The options of ``--adaptation lora`` (``config.yaml`` keys)."""

    lora_rank: int = Field(8, ge=1, le=4096, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha; updates scaled by alpha/r.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    lora_targets: tuple[str, ...] | None = Field(
        None, description="Comma-separated module names to adapt (default: ViT qkv,proj,fc1,fc2 (+ "
        "SwiGLU/Eva names); ConvNeXt fc1,fc2).")

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _split_lora_lists(cls, v: Any) -> Any:
        return comma_list(v)


@dataclass
class LoraAdaptation(Adaptation):
    """The loop's view of a LoRA run: adapters merged into the weights it saves."""

    lora: LoraInfo | None = None

    def best_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return merged_state_dict(model)

    def record(self) -> dict[str, Any]:
        out = super().record()
        if self.lora is not None:
            out["lora"] = {**self.lora.to_dict(), "merged": True}
        return out

    def describe(self) -> str:
        lo = self.lora
        assert lo is not None
        share = f"{self.trainable_params:,} of {self.total_params:,} parameters trainable"
        percent = 100 * self.trainable_params / max(1, self.total_params)
        return (f"lora r={lo.rank} alpha={lo.alpha:g} dropout={lo.dropout:g} on {len(lo.modules)} "
                f"modules ({', '.join(lo.targets)}): {lo.adapter_params:,} adapter + "
                f"{self.head_params:,} head = {share} ({percent:.2g}%)")


class Lora(Method):
    name: ClassVar[str] = "lora"
    summary: ClassVar[str] = "low-rank adapters on the attention and MLP projections plus the head, merged " \
                             "into best.safetensors (pip install 'cxrbench[lora]')"
    regime: ClassVar[Regime] = "loop"
    options: ClassVar[type[MethodOptions]] = LoraOptions

    def prepare(self, cfg: TrainSettings, model: nn.Module, head: nn.Module) -> Adaptation:
        opts = self.own_options(cfg)
        assert isinstance(opts, LoraOptions)
        spec = LoraSpec(rank=opts.lora_rank, alpha=opts.lora_alpha, dropout=opts.lora_dropout,
                        targets=opts.lora_targets)
        info = apply_lora(model, spec, seed=cfg.seed)  # the same adapters on every rank
        head.requires_grad_(True)
        n = count_params(model, head)
        return LoraAdaptation(kind=self.name, head=head, total_params=n["total_params"],
                              trainable_params=n["trainable_params"], head_params=n["head_params"], lora=info)

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        ranks = sorted({f["lora_rank"] for f in facts if f.get("lora_rank")})
        alphas = sorted({f["lora_alpha"] for f in facts if f.get("lora_alpha")})
        opts = ", ".join(x for x in (f"rank {'/'.join(map(str, ranks))}" if ranks else "",
                                     f"alpha {'/'.join(f'{a:g}' for a in alphas)}" if alphas else "") if x)
        return ("LoRA (low-rank adapters through peft on the attention and MLP projections"
                + (f", {opts}" if opts else "") + "; head trained fully; adapters merged for evaluation)")


METHOD = Lora()
