"""Creating a timm architecture with one error shape, shared by building and converting models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxrbench.common.errors import InputError

if TYPE_CHECKING:
    from torch import nn


def cfg_fields(cfg: Any) -> dict[str, Any]:
    """A timm pretrained config (dataclass or mapping) as a plain dict."""
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def timm_create(arch: str, init: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, **kwargs)``; an option the architecture refuses or weights that do not
    fit it become one InputError naming the init."""
    import timm

    try:
        return timm.create_model(arch, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e) or "got an unexpected" in str(e):
            raise InputError(
                f"timm model {arch!r} does not accept an option: {e}",
                where=f"init {init}",
                fix="remove that model option",
            ) from None
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = " ".join(str(e).split())[:400]
        raise InputError(
            f"the weights do not fit {arch!r}: {first[:200]} ({detail})",
            where=f"init {init}",
            fix="check that the file belongs to this architecture (for a checkpoint: 'arch' in its json)",
        ) from None
