"""The Python API as a notebook user meets it: every front door documents itself (signature,
parameters, return value, example), constructors raise the one InputError with the CLI's message
in Python's terms, and docs/python-api.md's script drives the whole pipeline."""

from __future__ import annotations

import inspect
import os
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import cxrbench
from cxrbench.common.errors import InputError, command_line

REPO = Path(__file__).resolve().parents[1]
DOORS = [n for n in cxrbench.__all__ if n != "__version__"]
EXCEPTIONS = {"InputError", "CxrbenchWarning"}


def _doc(obj) -> str:
    return obj.__doc__ if inspect.ismodule(obj) else (inspect.getdoc(obj) or "")


@pytest.mark.parametrize("name", [n for n in DOORS if n not in EXCEPTIONS])
def test_every_front_door_documents_its_parameters_return_and_an_example(name):
    obj = getattr(cxrbench, name)
    doc, sig = _doc(obj), inspect.signature(obj)
    assert "Example" in doc, f"{name}: no example"
    if not isinstance(obj, type):
        assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
        assert "Returns" in doc, f"{name}: the return value is not described"
    missing = [p for p in sig.parameters if not re.search(rf"\b{p}\b", doc)]
    assert not missing, f"{name}: parameters not described: {missing}"


def test_the_lazy_doors_are_the_real_objects():
    from cxrbench.evaluate.run_eval import evaluate_run
    from cxrbench.train.config import TrainConfig

    assert cxrbench.evaluate_run is evaluate_run and cxrbench.TrainConfig is TrainConfig
    assert issubclass(cxrbench.InputError, ValueError)
    assert set(dir(cxrbench)) >= set(DOORS)


def test_help_of_train_config_shows_every_field_with_its_cli_description():
    text = pydoc.render_doc(cxrbench.TrainConfig, renderer=pydoc.plaintext)
    fields = cxrbench.TrainConfig.model_fields
    assert all(f.description for f in fields.values())
    flat = " ".join(text.split())
    for name, info in fields.items():
        assert f"{name} :" in flat and " ".join(info.description.split()) in flat, name
    # the shared settings first, as `cxrbench train --help` lists them
    assert list(inspect.signature(cxrbench.TrainConfig).parameters)[:3] == ["cache", "init", "out"]
    pretrain = pydoc.render_doc(cxrbench.PretrainConfig, renderer=pydoc.plaintext)
    pretrain_fields = cxrbench.PretrainConfig.model_fields.items()
    assert all(f.description and f"{n} :" in pretrain for n, f in pretrain_fields)


BASE = {"cache": "c", "init": "random-vit-test", "out": "o"}


def test_constructors_raise_the_one_input_error_with_the_documented_message():
    with pytest.raises(InputError) as err:
        cxrbench.TrainConfig(**BASE, lrr=1e-3)
    assert str(err.value) == "TrainConfig: unknown key 'lrr'. Fix: did you mean 'lr'?"
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)
    with pytest.raises(ValueError, match="PretrainConfig: unknown key 'lrr'. Fix: did you mean 'lr'"):
        cxrbench.PretrainConfig(caches=["c"], init="x", out="o", lrr=1)
    with pytest.raises(InputError, match="^IndexOptions: unknown index option 'splitseed'.*'split_seed'"):
        cxrbench.IndexOptions(splitseed=1)
    with pytest.raises(InputError, match="^uncertain got 'zero'.*did you mean 'zeros'"):
        cxrbench.IndexOptions(uncertain="zero")
    # validation inside a validator that raises InputError itself keeps its own message
    with pytest.raises(InputError, match="^split_fractions got '0.5,0.5'"):
        cxrbench.IndexOptions(split_fractions="0.5,0.5")
    # from_dict names the file; model_validate stays pydantic's (what adds a YAML file's line numbers)
    with pytest.raises(InputError, match="^run.yaml: unknown key 'lrr'"):
        cxrbench.TrainConfig.from_dict({**BASE, "lrr": 1}, where="run.yaml")
    with pytest.raises(ValidationError):
        cxrbench.TrainConfig.model_validate({**BASE, "lrr": 1})
    cfg = cxrbench.TrainConfig(**BASE, lr=3e-4)  # frozen and validated as before
    with pytest.raises(ValidationError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_messages_name_python_parameters_from_python_and_flags_from_the_cli():
    with pytest.raises(InputError) as err:
        cxrbench.TrainConfig(**BASE, lr="fast")
    assert "lr: got 'fast'" in str(err.value) and "Fix: give lr= a number > 0" in str(err.value)
    assert "--lr" not in str(err.value)
    with command_line(), pytest.raises(InputError) as err:
        cxrbench.TrainConfig(**BASE, lr="fast")
    assert "Fix: give --lr a number > 0" in str(err.value)
    with pytest.raises(InputError, match=r"^nowhere: cache= is required.*or point out= at an existing"):
        cxrbench.TrainConfig.for_run("nowhere", {"init": "x"})
    with command_line(), pytest.raises(InputError, match=r"--cache is required for a new run.*point --out"):
        cxrbench.TrainConfig.for_run("nowhere", {"init": "x"})


def test_a_wrong_option_from_the_cli_still_names_the_flag(cli_runner, tmp_path):
    from cxrbench.cli import app

    result = cli_runner.invoke(app, ["phantom", str(tmp_path / "p"), "--format", "nhi", "--patients", "4"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --format got 'nhi'")
    with pytest.raises(InputError, match="^fmt got 'nhi'.*did you mean 'nih'"):  # the same from Python
        cxrbench.generate_phantom(tmp_path / "p", "nhi", 4)


def _script() -> str:
    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
              if b.startswith("# cxrbench: the whole pipeline from Python")]
    assert len(blocks) == 1
    return blocks[0]


def test_the_pipeline_script_uses_only_front_doors():
    code = _script()
    compile(code, "python-api.md", "exec")
    used = set(re.findall(r"cxrbench\.(\w+)", code))
    assert used and used <= set(DOORS), used - set(DOORS)
    assert {"generate_phantom", "build_index", "prepare_cache", "TrainConfig", "train", "evaluate_run",
            "load_predictions", "compare_predictions", "load_study", "run_study"} <= used


def test_the_documented_pipeline_runs_end_to_end(tmp_path):
    """docs/python-api.md's script: phantom -> index -> cache -> two seeds -> evaluate -> compare ->
    a 16-step study, from Python only (about 20 s on a quiet 2-core machine with one thread)."""
    env = {**os.environ, "CXRBENCH_API_DEMO": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _script()], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "work"
    assert re.search(r"^seed0: mean AUROC 0\.\d{3} \(0\.\d{3}-[01]\.\d{3}\)$", done.stdout, re.M)
    assert (work / "run-s0" / "best.safetensors").is_file()
    assert (work / "run-s1" / "eval" / "test" / "metrics.json").is_file()
    assert re.search(r"^16 steps; .*study/report/index.html$", done.stdout, re.M)
    results = cxrbench.load_results(work / "study")
    # the two inits and the metadata-only shortcut baseline's own rows
    assert set(results["init"]) == {"scratch", "slow", "shortcut"} and results["pooled"].any()
    assert set(results.loc[~results["pooled"], "seed"].dropna()) == {0, 1}
    # the warnings pointed at the script's lines, not at cxrbench's
    assert "<string>:" in done.stderr and "cxrbench/" not in done.stderr
