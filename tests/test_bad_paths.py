"""Every command against unreadable inputs and unwritable outputs: one line, exit 2, no traceback.

Input classes: a missing path, a folder where a file is expected, a file that is not UTF-8 text,
and a file that cannot be read at all (``/proc/self/mem`` fails with an I/O error even for root).
Output classes: an existing folder where a file is expected, a parent path that is a file, and a
place nobody may write (under ``/sys``, refused even to root). Tests run as root on CI, so plain
``chmod`` cannot make a path unreadable or unwritable there; these paths can.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.cli import app

UNREADABLE = Path("/proc/self/mem")
UNWRITABLE = Path("/sys/cxrbench-test-unwritable")


def _unwritable_works() -> bool:
    try:
        UNWRITABLE.mkdir(parents=True)
    except OSError:
        return True
    UNWRITABLE.rmdir()
    return False


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom NIH dataset, its index and cache, a tiny trained run, and bad files of each kind."""
    import torch

    from cxrbench.cache.build import prepare_cache
    from cxrbench.index.build import build_index
    from cxrbench.phantom import generate
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    base = tmp_path_factory.mktemp("bad_paths")
    root = base / "nih"
    generate(root, "nih", 40, size=32, seed=3, quiet=True)
    index = base / "nih.parquet"
    build_index("nih", root, out=index, labels="cardiomegaly,pleural_effusion")
    cache = base / "cache"
    prepare_cache(index, root, cache, size=32, workers=1, quiet=True)
    run = base / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(cache=str(cache), init="random-vit-test", out=str(run), epochs=1, batch_size=8,
                          lr=1e-3, workers=0, augment=False), quiet=True)
    finally:
        torch.set_num_threads(threads)
    latin = base / "latin1.yaml"
    latin.write_bytes("name: \xe9tude\n".encode("latin-1"))
    laughs = base / "laughs.yaml"  # ~550 bytes, 9**9 values once its aliases are expanded
    laughs.write_text("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)) + "name: *a8\n")
    a_file = base / "a_file"
    a_file.write_text("x")
    (base / "empty.txt").write_bytes(b"")
    (base / "text.txt").write_text("hello world\nsecond line\n")
    (base / "table.csv").write_text("image_id,label\na,1\nb,0\n")
    folder = base / "a_folder"
    folder.mkdir()
    image = next(root.rglob("*.png"))
    return {"root": root, "index": index, "cache": cache, "run": run, "latin": latin, "laughs": laughs,
            "file": a_file, "folder": folder, "image": image, "base": base}


# (label, argv builder); {x} placeholders are filled from the world fixture and the case's bad path
def _cases():
    inputs = {
        "missing": lambda w: w["base"] / "no-such-thing",
        "folder": lambda w: w["folder"],
        "not-utf8": lambda w: w["latin"],
        "unreadable": lambda w: UNREADABLE,
        "empty": lambda w: w["base"] / "empty.txt",
        "text": lambda w: w["base"] / "text.txt",
        "csv": lambda w: w["base"] / "table.csv",
    }
    basic = ("missing", "folder", "not-utf8", "unreadable")
    outputs = {
        "existing-folder": lambda w: w["folder"],
        "parent-is-a-file": lambda w: w["file"] / "out",
        "unwritable": lambda w: UNWRITABLE / "out",
    }
    text_inputs = [  # commands reading a text (YAML/JSON/CSV) file the user names
        ("study run", lambda w, p: ["study", "run", str(p), "--dry-run"]),
        ("train --config", lambda w, p: ["train", "--cache", str(w["cache"]), "--init", "random-vit-test",
                                         "--out", str(w["base"] / "t-cfg"), "--config", str(p)]),
        ("index --mapping", lambda w, p: ["index", "--dataset", "csv", "--root", str(w["root"]), "--mapping",
                                          str(p), "--out", str(w["base"] / "i.parquet")]),
        ("index --labels-file", lambda w, p: ["index", "--dataset", "nih", "--root", str(w["root"]),
                                              "--labels-file", str(p), "--out", str(w["base"] / "i.pq")]),
        ("pretrain --config", lambda w, p: ["pretrain", "--cache", str(w["cache"]), "--init",
                                            "random-vit-test", "--out", str(w["base"] / "p-cfg"),
                                            "--config", str(p)]),
    ]
    yaml_inputs = ("study run", "train --config", "index --mapping", "pretrain --config")  # bounded YAML
    index_inputs = [  # a Parquet index (or a cache folder) the user names: wrong format, empty, text...
        ("describe", lambda w, p: ["describe", str(p)]),
        ("prepare --index", lambda w, p: ["prepare", "--index", str(p), "--root", str(w["root"]), "--out",
                                          str(w["base"] / "c-in")]),
        ("audit --index", lambda w, p: ["audit", "--init", "random-vit-test", "--index", str(p)]),
        ("pretrain --exclude", lambda w, p: ["pretrain", "--cache", str(w["cache"]), "--init",
                                             "random-vit-test", "--out", str(w["base"] / "p-ex"),
                                             "--exclude", str(p)]),
        ("evaluate --metadata", lambda w, p: ["evaluate", str(w["run"]), "--metadata", str(p), "--bootstrap",
                                              "0", "-q", "--out-json", str(w["base"] / "e.json")]),
        ("shortcut SOURCE", lambda w, p: ["shortcut", str(p), "--out", str(w["base"] / "sc")]),
    ]
    list_inputs = [  # a text/CSV/Parquet list of images
        ("audit --pretraining-list", lambda w, p: ["audit", "--init", "random-vit-test", "--index",
                                                   str(w["index"]), "--pretraining-list", str(p)]),
    ]
    run_inputs = [  # a run folder, given a file
        ("evaluate RUN", lambda w, p: ["evaluate", str(p), "--bootstrap", "0", "-q"]),
        ("export RUN", lambda w, p: ["export", str(p), str(w["base"] / "exp")]),
        ("compare RUN", lambda w, p: ["compare", str(w["run"]), str(p)]),
        ("predict RUN", lambda w, p: ["predict", str(p), str(w["image"])]),
    ]
    file_inputs = [  # commands reading a binary/any file the user names
        ("describe", lambda w, p: ["describe", str(p)]),
        ("prepare --index", lambda w, p: ["prepare", "--index", str(p), "--root", str(w["root"]), "--out",
                                          str(w["base"] / "c-in")]),
        ("predict IMAGE", lambda w, p: ["predict", str(w["run"]), str(p)]),
        ("weights import FILE", lambda w, p: ["weights", "import", "dinov2-vits14", str(p)]),
    ]
    out_cmds = [  # commands writing where the user says
        ("phantom OUT", lambda w, p: ["phantom", str(p), "--format", "nih", "--patients", "2", "--size",
                                      "32"], ("parent-is-a-file", "unwritable")),
        ("index --out", lambda w, p: ["index", "--dataset", "nih", "--root", str(w["root"]), "--out", str(p)],
         tuple(outputs)),
        ("prepare --out", lambda w, p: ["prepare", "--index", str(w["index"]), "--root", str(w["root"]),
                                        "--out", str(p), "--size", "32", "--workers", "1"],
         ("parent-is-a-file", "unwritable")),
        ("train --out", lambda w, p: ["train", "--cache", str(w["cache"]), "--init", "random-vit-test",
                                      "--out", str(p), "--epochs", "1"], ("parent-is-a-file", "unwritable")),
        ("evaluate --out-json", lambda w, p: ["evaluate", str(w["run"]), "--bootstrap", "0", "--out-json",
                                              str(p), "-q"], tuple(outputs)),
        ("predict --out", lambda w, p: ["predict", str(w["run"]), str(w["image"]), "--out", str(p)],
         tuple(outputs)),
        ("demo --out", lambda w, p: ["demo", "--out", str(p), "--tiny", "--quiet"],
         ("parent-is-a-file", "unwritable")),
    ]
    cases = []
    for name, argv in text_inputs:
        kinds = [*basic, "empty"] if name != "index --labels-file" else [*basic, "empty", "text"]
        if name in yaml_inputs:
            kinds.append("csv")  # not a mapping
        cases += [pytest.param(argv, inputs[k], id=f"{name}:{k}") for k in kinds]
        if name in yaml_inputs:
            cases.append(pytest.param(argv, lambda w: w["laughs"], id=f"{name}:nested-aliases"))
    for name, argv in index_inputs:
        kinds = ("missing", "unreadable", "empty", "text", "csv", "not-utf8")
        cases += [pytest.param(argv, inputs[k], id=f"{name}:{k}") for k in kinds]
    for name, argv in list_inputs:
        cases += [pytest.param(argv, inputs[k], id=f"{name}:{k}") for k in (*basic, "empty")]
    for name, argv in run_inputs:
        cases += [pytest.param(argv, inputs[k], id=f"{name}:{k}") for k in ("missing", "text")]
    for name, argv in file_inputs:
        kinds = ("missing", "folder", "unreadable")
        cases += [pytest.param(argv, inputs[k], id=f"{name}:{k}") for k in kinds]
    for name, argv, kinds in out_cmds:
        cases += [pytest.param(argv, outputs[k], id=f"{name}:{k}") for k in kinds]
    return cases


CASES = _cases()


@pytest.mark.parametrize(("argv", "bad"), CASES)
def test_one_line_exit_2_and_nothing_lost(world, cli_runner, argv, bad, monkeypatch):
    path = bad(world)
    if str(path).startswith(str(UNWRITABLE)) and not _unwritable_works():
        pytest.skip(f"{UNWRITABLE} is writable on this machine")
    monkeypatch.setenv("CXRBENCH_HOME", str(world["base"] / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_files = {p: p.stat().st_mtime_ns for p in world["run"].rglob("*") if p.is_file()}
    result = cli_runner.invoke(app, argv(world, path))
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output + result.stderr
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert any(s in err[0] for s in (str(path), path.name, "not UTF-8", str(path.parent))), err[0]
    if path.name == "laughs.yaml":
        assert "aliases are expanded" in err[0]  # refused by the bound, not by a later check
    assert {p: p.stat().st_mtime_ns for p in world["run"].rglob("*") if p.is_file()
            if p in run_files} == run_files  # finished work untouched


def test_the_matrix_covers_every_command():
    ids = {p.id.split(":")[0].split()[0] for p in CASES}
    assert ids >= {"study", "train", "index", "describe", "prepare", "predict", "weights", "phantom",
                   "evaluate", "demo", "audit", "pretrain", "shortcut", "compare", "export"}
    assert len(CASES) >= 100
