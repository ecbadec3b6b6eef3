import json
import re

import numpy as np
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError, command_line
from cxrbench.index.build import build_index, report_path
from cxrbench.index.schema import read_index

HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
ROWS = [
    f"{p:08d}_{k:03d}.png,{lab},{k},{p},{40 + p % 30},{'MF'[p % 2]},{'PA' if k % 2 else 'AP'}"
    for p in range(1, 41)
    for k, lab in enumerate(["No Finding", "Mass|Nodule", "Effusion"][: 1 + p % 3])
]


@pytest.fixture
def nih_root(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    return root


def test_build_index_writes_index_and_report(nih_root, tmp_path):
    out = tmp_path / "out" / "nih.parquet"
    df, findings, report = build_index("nih", nih_root, out=out, labels="study-cxr14-mimic", split_seed=3)
    back, back_findings = read_index(out)
    assert (
        back_findings
        == findings
        == [
            "no_finding",
            "atelectasis",
            "cardiomegaly",
            "consolidation",
            "pleural_effusion",
            "pneumonia",
            "pneumothorax",
        ]
    )
    assert len(back) == len(ROWS) and list(back["image_id"]) == list(df["image_id"])
    assert back[findings].dtypes.eq(np.float32).all()
    saved = json.loads(report_path(out).read_text())
    assert saved["dataset"] == "nih" and saved["options"]["split_seed"] == 3
    assert saved["images_indexed"] == len(ROWS) and saved["patients_indexed"] == 40
    assert len(saved["index_sha256"]) == 64 and saved["provenance"]["versions"]["cxrbench"]
    assert report_path("a/b.parquet").name == "b.report.json"


def test_split_seed_changes_the_split_and_is_reproducible(nih_root):
    a = build_index("nih", nih_root, split_seed=1)[0]["split"]
    b = build_index("nih", nih_root, split_seed=1)[0]["split"]
    c = build_index("nih", nih_root, split_seed=2, split_fractions="0.5,0.25,0.25")[0]["split"]
    assert (a == b).all() and (a != c).any()


def test_views_option(nih_root):
    df, _, report = build_index("nih", nih_root, views="PA")
    assert set(df["view"]) == {"PA"} and report["dropped"]["views"]["AP"] > 0
    with pytest.raises(InputError, match="^views got 'SIDE'"):
        build_index("nih", nih_root, views="PA,SIDE")
    with pytest.raises(InputError, match="no image left after views='LATERAL'.*or views='all'"):
        build_index("nih", nih_root, views="LATERAL")
    with command_line(), pytest.raises(InputError, match="no image left after --views LATERAL.*--views all"):
        build_index("nih", nih_root, views="LATERAL")


def test_check_files_and_drop_missing(nih_root):
    img = nih_root / "images"
    img.mkdir()
    names = [r.split(",")[0] for r in ROWS]
    for n in names[:-2]:
        (img / n).write_bytes(b"x")
    df, _, report = build_index("nih", nih_root)  # the fast check is on by default: a warning
    assert report["images"]["missing"] == 2 and len(df) == len(ROWS)
    warned = [w for w in report["warnings"] if "image files" in w]
    assert len(warned) == 1 and warned[0].startswith(f"2 of {len(ROWS)} image files listed")
    assert "drop_missing=True" in warned[0]  # the caller's spelling (--drop-missing from the CLI)
    with pytest.raises(InputError, match="2 of .* image files .* missing.*drop_missing=True"):
        build_index("nih", nih_root, check_files=True)
    df, _, report = build_index("nih", nih_root, drop_missing=True)
    assert len(df) == len(ROWS) - 2 and report["images"]["dropped"] == 2
    assert report["dropped"]["missing_images"] == 2  # shown by `describe` with the other drops
    counts = report["split"]["counts"]  # of the index written: after the drop, warnings quote these
    assert sum(c["images"] for c in counts.values()) == len(df)
    for w in (w for w in report["warnings"] if w.startswith("finding ")):
        f = w.split("'")[1]
        for s, c in counts.items():
            if c["images"] and min(c["findings"][f]["positive"], c["findings"][f]["negative"]) < 10:
                pos, neg = c["findings"][f]["positive"], c["findings"][f]["negative"]
                assert f"{s} {pos} positive / {neg} negative" in w


def test_the_existence_check_lists_folders_not_files(nih_root, tmp_path, monkeypatch):
    import os

    import pandas as pd

    from cxrbench.index.sources import files

    img = nih_root / "images"
    img.mkdir()
    for n in [r.split(",")[0] for r in ROWS]:
        (img / n).write_bytes(b"x")
    listed, listdir = [], os.listdir
    monkeypatch.setattr(files.os, "listdir", lambda p: listed.append(p) or listdir(p))
    _, _, report = build_index("nih", nih_root)
    assert report["images"]["missing"] == 0 and listed == []  # the adapter's own listing is reused
    for k, d in enumerate(("a/x", "a/y", "b")):  # a csv-style tree: one listing per folder, no stat
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / f"{k}.png").write_bytes(b"x")
    paths = pd.Series(["a/x/0.png", "a/y/1.png", "b/2.png", "b/9.png", "c/3.png"])
    found, info = files.scan_images(tmp_path, paths)
    assert found.tolist() == [True, True, True, False, False] and info["folders_listed"] == 3
    assert sorted(map(str, listed)) == sorted(str(tmp_path / d) for d in ("", "a/x", "a/y", "b"))


def test_a_missing_sub_folder_is_suggested(tmp_path):
    import pandas as pd

    from cxrbench.index.sources.files import missing_images, scan_images

    (tmp_path / "export" / "img").mkdir(parents=True)
    for n in ("a.png", "b.png"):
        (tmp_path / "export" / "img" / n).write_bytes(b"x")
    (tmp_path / "img").mkdir()  # an image folder exists, but the files are one level down
    found, info = scan_images(tmp_path, pd.Series(["img/a.png", "img/b.png"]))
    assert not found.any() and info["prefix_hint"] == "export/"
    what, fix = missing_images(2, 2, tmp_path, info)
    assert "path_prefix: export/" in fix


@pytest.mark.parametrize(
    "kwargs,match",
    [
        # from Python the messages name the keyword arguments (the CLI's flags: test_cli_index_errors...)
        ({"uncertain": "maybe"}, "^uncertain got 'maybe'"),
        ({"readers": "all"}, "^readers got 'all'"),
        ({"split_mode": "random"}, "^split_mode got 'random'"),
        ({"labels": "study-vindr"}, "nih does not provide finding"),
        ({"labels_file": "nope.csv"}, "labels_file file not found"),
        ({"split_seed": "one"}, "split_seed got 'one'"),
    ],
)
def test_bad_options(nih_root, kwargs, match):
    with pytest.raises(InputError, match=match):
        build_index("nih", nih_root, **kwargs)


def test_unknown_dataset_and_root(tmp_path):
    with pytest.raises(InputError, match="did you mean 'padchest'"):
        build_index("padchets", tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        build_index("nih", tmp_path / "missing")


def test_cli_index_writes_and_summarizes(cli_runner, nih_root, tmp_path):
    out = tmp_path / "i.parquet"
    result = cli_runner.invoke(
        app,
        ["index", "--dataset", "nih", "--root", str(nih_root), "--out", str(out), "--labels", "study-cxr14"],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout and "14 findings" in result.stdout
    assert out.is_file() and report_path(out).is_file()
    import re

    import pandas as pd

    df = pd.read_parquet(out)  # the split counts are labelled: images / patients, per split
    parts = re.search(r"\((train .*? patients)\)", result.stdout).group(1)
    for s in ("train", "val", "test"):
        n_img, n_pat = int((df["split"] == s).sum()), df.loc[df["split"] == s, "patient_id"].nunique()
        assert f"{s} {n_img:,} images / {n_pat:,} patients" in parts, parts


@pytest.mark.parametrize(
    "args,match",
    [
        (["--dataset", "nih", "--uncertain", "sometimes"], "error: --uncertain got 'sometimes'"),
        (["--dataset", "nhi"], "error: --dataset got 'nhi'.*did you mean 'nih'"),
        (["--dataset", "chexpert"], "error: .*CheXpert train.csv not found"),
    ],
)
def test_cli_index_errors_exit_2_with_one_line(cli_runner, nih_root, tmp_path, args, match):
    result = cli_runner.invoke(
        app, ["index", "--root", str(nih_root), "--out", str(tmp_path / "x.parquet"), *args]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert re.search(match, result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()


def test_cli_index_help_lists_options(cli_runner):
    result = cli_runner.invoke(app, ["index", "--help"])
    assert result.exit_code == 0
    for opt in (
        "--dataset",
        "--labels",
        "--uncertain",
        "--views",
        "--split-seed",
        "--readers",
        "--mapping",
        "--check-files",
        "--labels-file",
    ):
        assert opt in result.stdout


def test_image_names_escaping_the_root_are_refused(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "\n../../etc/passwd,No Finding,0,1,40,M,PA\n")
    with pytest.raises(InputError, match="path 'images/../../etc/passwd' is absolute or escapes") as err:
        build_index("nih", root)
    assert "Data_Entry_2017_v2020.csv, line 2:" in err.value.one_line()  # the file's own line (header = 1)


def test_index_options_are_the_single_list_of_options(tmp_path):
    # the CLI, build_index(**kwargs) and a study's datasets.<name> all go through IndexOptions
    from cxrbench.index.sources.base import IndexOptions

    defaults = IndexOptions().model_dump()
    assert IndexOptions.from_dict(defaults) == IndexOptions()
    with pytest.raises(InputError, match="unknown index option 'split_seeds'.*did you mean 'split_seed'"):
        build_index("nih", tmp_path, split_seeds=1)
    with pytest.raises(InputError, match="^uncertain got 'sometimes'"):
        IndexOptions.from_dict({"uncertain": "sometimes"})
    with pytest.raises(InputError, match="^uncertain got 'sometimes'"):  # the constructor checks as much
        IndexOptions(uncertain="sometimes")
    with pytest.raises(InputError, match="^split_fractions got"):
        IndexOptions.from_dict({"split_fractions": "0.5,0.5"})
    with command_line(), pytest.raises(InputError, match="^--split-fractions got"):
        IndexOptions.from_dict({"split_fractions": "0.5,0.5"})
    with pytest.raises(InputError, match="options= or option keywords"):
        build_index("nih", tmp_path, options=IndexOptions(), labels="all")


def test_the_report_states_the_label_definition(tmp_path):
    from cxrbench.index.sources.base import IndexOptions, label_definition

    opts = IndexOptions(uncertain="ignore", blank="zeros")
    text = label_definition("the labeler's mentions", opts, True,
                            {"uncertain_values": 12, "blank_values": 3000, "not_labelled": 0})
    assert text == ("Labels: the labeler's mentions; uncertain counted as unknown (left out of training loss "
                    "and metrics) (12 values); not mentioned counted as negative (3,000 values).")
    text = label_definition("NLP-mined", IndexOptions(), False, {"uncertain_values": 0, "not_labelled": 5})
    assert text == "Labels: NLP-mined; 5 values not labelled at all are unknown."
