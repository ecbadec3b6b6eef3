"""``cxrbench export RUN OUT --format onnx``: the best model as ONNX, verified by onnxruntime.

``model.onnx`` takes ``image`` float32 ``[batch, 3, S, S]`` (normalized as ``config.json`` says) and
returns ``logits`` and ``probabilities`` (sigmoid) ``[batch, K]``; the batch dimension is dynamic.
The label names, normalization, input size and thresholds are also in the model's metadata. After
the export, onnxruntime runs the file on fixed random inputs at two batch sizes and the result is
compared with the PyTorch model's on the same inputs: the largest absolute difference of the logits
is returned (and printed by the command); above ``atol`` the export fails and nothing is written.

onnx and onnxruntime are an extra: ``pip install 'cxrbench[export]'``. The export uses PyTorch's
TorchScript-based exporter (``dynamo=False``), which needs no further package.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.export.card import RunFacts

VERIFY_BATCHES = (1, 3)  # neither is the batch size traced at export (2): the batch axis must be dynamic
VERIFY_SEED = 0


def _require() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise InputError(
            "--format onnx needs onnx and onnxruntime, which are not installed",
            where="--format",
            fix="pip install 'cxrbench[export]'",
        ) from None
    return onnx, onnxruntime


def _with_probabilities(model: Any) -> Any:
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.inner(image)
            return logits, torch.sigmoid(logits)

    return Wrapped(model).eval()


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Standard output (file descriptor 1, where C++ prints too) to the null device for a moment."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _export(model: Any, args: tuple, path: str, *, where: str, **options: Any) -> None:
    """``torch.onnx.export``; an operator the chosen opset cannot express is one InputError."""
    import torch

    try:
        with _quiet_stdout():  # on failure the exporter prints its whole graph (from C++) to stdout
            torch.onnx.export(model, args, path, **options)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:
        reason = " ".join(str(e).split())[:200]
        opset = options.get("opset_version")
        raise InputError(f"the model cannot be exported with --opset {opset} ({reason})",
                         where=where, fix="try a newer --opset (17 is the default)") from None


def verify_inputs(size: int, batches: tuple[int, ...] = VERIFY_BATCHES) -> list[np.ndarray]:
    """Fixed random inputs ``[b, 3, size, size]`` (standard normal, like normalized images)."""
    rng = np.random.default_rng(VERIFY_SEED)
    return [rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in batches]


def max_abs_diff(model: Any, session: Any, inputs: list[np.ndarray]) -> float:
    """Largest |onnxruntime - PyTorch| over the logits of every input batch."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = model(torch.from_numpy(x)).numpy()
            got = session.run(["logits"], {"image": x})[0]
            if got.shape != ref.shape:
                raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
            worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


OPSETS = (7, 20)  # the opsets torch.onnx's TorchScript exporter writes


def check_onnx_options(atol: float, opset: int) -> None:
    """``atol`` a finite number >= 0 and ``opset`` an opset the exporter writes: else one InputError."""
    import math

    if not (math.isfinite(atol) and atol >= 0):
        raise InputError(f"got {atol:g}, expected a number >= 0 (the largest accepted difference)",
                         where="--atol", fix="give e.g. --atol 1e-4 (0 demands identical outputs)")
    lo, hi = OPSETS
    if not lo <= opset <= hi:
        raise InputError(f"got {opset}, expected an opset from {lo} to {hi} (what the exporter writes)",
                         where="--opset",
                         fix="give e.g. --opset 17 (the default)")


def export_onnx(model: Any, facts: RunFacts, path: Path, *, atol: float = 1e-4, opset: int = 17) -> float:
    """Write ``path`` (ONNX, dynamic batch) and verify it against ``model``; returns the max abs diff."""
    import torch

    onnx, ort = _require()
    size = int(facts.meta["image_size"])
    model = model.float().eval()
    wrapped = _with_probabilities(model)
    check_onnx_options(atol, opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        _export(
            wrapped,
            (torch.zeros(2, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            where=str(facts.run_dir),
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {
        "label_names": json.dumps(facts.findings),
        "mean": json.dumps(list(facts.meta["mean"])),
        "std": json.dumps(list(facts.meta["std"])),
        "input_size": json.dumps([3, size, size]),
        "thresholds": json.dumps(facts.thresholds),
        "init": str(facts.meta["init"]),
        "architecture": str(facts.meta["arch"]),
        "producer": "cxrbench export",
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = max_abs_diff(model, session, verify_inputs(size))
    if not diff <= atol:
        raise InputError(
            f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol:g}) on the same inputs",
            where=str(facts.run_dir),
            fix="try another --opset, or raise --atol knowingly",
        )
    return diff
