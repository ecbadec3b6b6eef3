"""A stage package that is its own front door: `cxrbench.train(cfg)`, its signature and its help."""

from __future__ import annotations

import inspect
import subprocess
import sys


def test_train_and_pretrain_show_the_real_function():
    import cxrbench
    from cxrbench.pretrain.loop import pretrain
    from cxrbench.train.loop import train

    for door, real in ((cxrbench.train, train), (cxrbench.pretrain, pretrain)):
        assert inspect.signature(door) == inspect.signature(real)
        doc = door.__doc__
        assert doc.startswith(f"{real.__name__}(cfg: ") and inspect.getdoc(real) in doc
        assert f"The package {door.__name__} (the stage) holds" in doc and "Example" in doc
    assert "(cfg: 'TrainConfig', *, overwrite: 'bool' = False" in str(inspect.signature(cxrbench.train))


def test_help_renders_the_front_door_and_importing_the_stage_stays_torch_free():
    code = ("import sys, pydoc, cxrbench; stage = cxrbench.train; assert 'torch' not in sys.modules; "
            "text = pydoc.render_doc(stage, renderer=pydoc.plaintext); print(text)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    head = done.stdout.split("DESCRIPTION")[0]
    assert "train(cfg: 'TrainConfig'" in head and "-> 'TrainResult'" in head
    assert "Args:" in done.stdout and "Example::" in done.stdout and "PACKAGE CONTENTS" in done.stdout
