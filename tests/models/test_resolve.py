"""models.resolve: the one init-name parser."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.models.resolve import parse_init


@pytest.mark.parametrize(("name", "kind", "value"), [
    ("dinov2-vitb14", "registered", "dinov2-vitb14"),
    ("DINOv2-ViTB14", "registered", "dinov2-vitb14"),
    ("random-vit-test", "random", "vit-test"),
    ("timm:vit_base_patch16_224.augreg_in21k", "timm", "vit_base_patch16_224.augreg_in21k"),
    ("hf-hub:microsoft/rad-dino", "hf-hub", "microsoft/rad-dino"),
    ("checkpoint:runs/a/best.safetensors", "checkpoint", "runs/a/best.safetensors"),
    ("local-dir:runs/a", "checkpoint", "runs/a"),  # timm's spelling loads a checkpoint too
    ("checkpoint:C:/runs/a", "checkpoint", "C:/runs/a"),
])
def test_parse_init_tells_the_form_from_the_spelling(name, kind, value):
    parsed = parse_init(name)
    assert (parsed.kind, parsed.value) == (kind, value)
    assert parsed.is_checkpoint == (kind == "checkpoint")


def test_parse_init_refuses_empty_names_and_unknown_prefixes():
    with pytest.raises(InputError, match="no initialization given"):
        parse_init("  ")
    with pytest.raises(InputError, match="unknown prefix 'chekpoint:'"):
        parse_init("chekpoint:runs/a")


def test_parse_init_needs_neither_timm_nor_files():
    import subprocess
    import sys

    code = "from cxrbench.models.resolve import parse_init; parse_init('local-dir:/nowhere'); import sys; " \
           "print('timm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
