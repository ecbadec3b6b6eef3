"""Study config: validation with one clear error per mistake (file, line, key, fix), path resolution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cxrbench.common.errors import InputError
from cxrbench.study.load import load_study, parse_study

REPO = Path(__file__).resolve().parents[2]

BASE = """\
name: mini
datasets:
  nih:
    adapter: nih
    root: data/nih
    labels: study-cxr14
  chex:
    adapter: chexpert
    root: ${MINI_DATA:-data}/chexpert
inits:
  dinov2: {init: dinov2-vits14}
  ref: {init: imagenet21k-vitb16}
  dom: {init: "domain:chex", base: imagenet21k-vitb16}
comparisons: {reference: ref}
train: {epochs: 3, lr: 3.0e-5}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / "cfg" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> InputError:
    with pytest.raises(InputError) as e:
        load_study(write(tmp_path, text))
    return e.value


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MINI_DATA", raising=False)
    study = load_study(write(tmp_path, BASE))
    cfg = study.config
    assert list(cfg.datasets) == ["nih", "chex"] and list(cfg.inits) == ["dinov2", "ref", "dom"]
    assert study.roots["nih"] == (tmp_path / "cfg" / "data" / "nih").resolve()
    assert study.roots["chex"] == (tmp_path / "cfg" / "data" / "chexpert").resolve()
    assert study.out == (tmp_path / "cfg" / "mini").resolve()
    assert cfg.inits["dom"].domain == "chex" and cfg.inits["ref"].domain is None
    assert study.train == {"epochs": 3, "lr": 3e-5}


def test_environment_variables_and_out_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_DATA", str(tmp_path / "elsewhere"))
    study = load_study(write(tmp_path, BASE), out=tmp_path / "o")
    assert study.roots["chex"] == (tmp_path / "elsewhere" / "chexpert").resolve()
    assert study.out == (tmp_path / "o").resolve()
    text = BASE.replace("${MINI_DATA:-data}", "$NOT_SET_ANYWHERE_42")
    err = error_of(tmp_path, text)
    assert "NOT_SET_ANYWHERE_42" in str(err) and "export" in str(err)


def test_unknown_key_names_line_and_closest_key(tmp_path):
    err = error_of(tmp_path, BASE.replace("    labels: study-cxr14", "    lables: study-cxr14"))
    msg = str(err)
    assert "line 6" in msg and "datasets.nih.lables" in msg and "did you mean 'labels'" in msg


def test_unknown_top_level_key(tmp_path):
    err = error_of(tmp_path, BASE + "seeed: [1]\n")
    assert "unknown key 'seeed'" in str(err) and "'seeds'" in str(err)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("adapter: nih", "adapter: nihh"), "datasets.nih.adapter"),
        (("reference: ref", "reference: reff"), "did you mean 'ref'"),
        (("domain:chex", "domain:chexx"), "did you mean 'chex'"),
        (("base: imagenet21k-vitb16}", "}"), "needs 'base"),
        (("epochs: 3", "epochs: 0"), "train.epochs"),
        (("epochs: 3", "epoch: 3"), "did you mean 'epochs'"),
        (("epochs: 3", "cache: x"), "set by the study"),
        (("labels: study-cxr14", "labels: study-cxr14\n    views: PA,LAT"), "unknown view 'LAT'"),
    ],
)
def test_bad_values_name_the_key(tmp_path, change, expected):
    old, new = change
    assert old in BASE
    err = error_of(tmp_path, BASE.replace(old, new))
    assert expected in str(err)
    assert str(tmp_path / "cfg" / "study.yaml") in str(err)


def test_comparisons_need_a_reference_or_all_pairs(tmp_path):
    err = error_of(tmp_path, BASE.replace("comparisons: {reference: ref}\n", ""))
    assert "all_pairs" in str(err)
    study = load_study(write(tmp_path, BASE.replace("{reference: ref}", "{all_pairs: true}")))
    assert study.config.comparisons.all_pairs


def test_index_options_are_checked(tmp_path):
    text = BASE.replace("    labels: study-cxr14", "    labels: study-cxr14\n    options: {split_mod: hash}")
    err = error_of(tmp_path, text)
    assert "split_mod" in str(err) and "split_mode" in str(err)


def test_invalid_yaml_and_missing_file(tmp_path):
    err = error_of(tmp_path, "name: x\ndatasets: {a: [\n")
    assert "invalid YAML" in str(err) and "line" in str(err)
    with pytest.raises(InputError, match="not found"):
        load_study(tmp_path / "nope.yaml")


def test_inits_list_shorthand_and_external_all():
    cfg = parse_study(
        {
            "name": "s",
            "datasets": {"a": {"adapter": "nih", "root": "/x"}, "b": {"adapter": "nih", "root": "/y"}},
            "inits": ["random-vit-test"],
            "external": "all",
        }
    )
    assert list(cfg.inits) == ["random-vit-test"]
    assert cfg.external_pairs() == [("a", "b", None), ("b", "a", None)]


def test_config_hash_depends_on_content_only():
    data = {"name": "s", "datasets": {"a": {"adapter": "nih", "root": "/x"}}, "inits": ["random-vit-test"]}
    h1 = parse_study(data).config_hash()
    assert parse_study(dict(reversed(list(data.items())))).config_hash() == h1
    assert parse_study({**data, "seeds": [1]}).config_hash() != h1


def test_a_study_given_as_a_dict_is_the_same_study_as_its_yaml(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # a dict's relative paths are relative to the current folder
    data = {"name": "s", "seeds": (0, 1), "datasets": {"a": {"adapter": "nih", "root": Path("data/a")}},
            "inits": ["random-vit-test"], "train": {"epochs": 2}}
    study = load_study(data, out="outs")
    plain = {**data, "seeds": [0, 1], "datasets": {"a": {"adapter": "nih", "root": "data/a"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(plain))
    from_file = load_study(tmp_path / "s.yaml", out="outs")
    assert study.config == from_file.config and study.config.config_hash() == from_file.config.config_hash()
    assert study.roots == {"a": tmp_path / "data" / "a"} and study.out == tmp_path / "outs"
    assert study.path.name == "<study dict>"
    with pytest.raises(InputError, match=r"^<study dict>: unknown key 'seds'. Fix: did you mean 'seeds'\?"):
        load_study({**data, "seds": [1]})
    with pytest.raises(InputError, match="the top level is not a mapping"):
        parse_study(["name"])


@pytest.mark.parametrize("name", ["study-2024.yaml", "study-dinov3.yaml"])
def test_shipped_configs_validate(name):
    study = load_study(REPO / "configs" / name)
    assert len(study.config.datasets) >= 2 and len(study.config.inits) >= 3


def test_study_2024_is_the_reference_matrix():
    cfg = load_study(REPO / "configs" / "study-2024.yaml").config
    assert set(cfg.datasets) == {"vindr", "cxr14", "chexpert", "mimic", "uka", "padchest"}
    assert {s.init for s in cfg.inits.values()} == {"dinov2-vitb14", "imagenet21k-vitb16", "domain:mimic"}
    assert cfg.train["lr"] == 1e-5 and cfg.train["batch_size"] == 30 and cfg.evaluation.bootstrap == 1000


def test_an_unknown_init_is_refused_at_load_with_its_line(tmp_path, cli_runner):
    from cxrbench.cli import app

    path = write(tmp_path, BASE.replace("{init: dinov2-vits14}", "{init: dinov2-vits41}"))
    with pytest.raises(InputError, match=r"study.yaml, line 11: unknown initialization 'dinov2-vits41'"):
        load_study(path)
    result = cli_runner.invoke(app, ["study", "run", str(path), "--dry-run"])  # before any indexing
    assert result.exit_code == 2 and "dinov2-vits41" in result.stderr and "line 11" in result.stderr
    bad_base = write(tmp_path, BASE.replace("base: imagenet21k-vitb16", "base: random-no_such_arch"))
    with pytest.raises(InputError, match="line 13: random-: unknown architecture"):
        load_study(bad_base)


def test_duplicate_keys_inits_and_arms_are_refused_naming_both_lines(tmp_path):
    dup_key = write(tmp_path, BASE.replace("train: {epochs: 3, lr: 3.0e-5}",
                                           "train: {epochs: 3, lr: 3.0e-5}\ntrain: {epochs: 4}"))
    with pytest.raises(InputError, match=r"key 'train' is given twice \(lines 15 and 16\)"):
        load_study(dup_key)
    listed = write(tmp_path, BASE.replace(
        "inits:\n  dinov2: {init: dinov2-vits14}\n  ref: {init: imagenet21k-vitb16}\n"
        "  dom: {init: \"domain:chex\", base: imagenet21k-vitb16}",
        "inits: [dinov2-vits14, imagenet21k-vitb16, dinov2-vits14]").replace("reference: ref",
                                                                             "reference: imagenet21k-vitb16"))
    with pytest.raises(InputError, match=r"init 'dinov2-vits14' is listed twice \(lines 10 and 10\)"):
        load_study(listed)
    twice = "  ref: {init: imagenet21k-vitb16}\n  ref2: {init: imagenet21k-vitb16}"
    same = write(tmp_path, BASE.replace("  ref: {init: imagenet21k-vitb16}", twice))
    with pytest.raises(InputError, match=r"inits 'ref' and 'ref2' are the same arm.*lines 12 and 13"):
        load_study(same)
    # the same init with other settings is a legitimate arm (e.g. a learning-rate sweep)
    load_study(write(tmp_path, BASE.replace("  ref: {init: imagenet21k-vitb16}",
                                            "  ref: {init: imagenet21k-vitb16}\n"
                                            "  ref2: {init: imagenet21k-vitb16, train: {lr: 1.0e-4}}")))


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: \xe9tude\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.yaml: the study config is not UTF-8 text \(byte 0xe9"):
        load_study(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("    labels: study-cxr14", "    labels: study-cxr14\n    mapping: covid.yaml"),
         "'mapping' is an index option. Fix: move it under the dataset's options: datasets: {NAME: {options: "
         "{mapping: ...}}}"),
        (("    labels: study-cxr14", "    labels: study-cxr14\n    drop_missing: true"),
         "under the dataset's options"),
        (("    labels: study-cxr14", "    options: {labels: study-cxr14}"), "beside `options:`"),
        (("comparisons:", "epochs: 3\ncomparisons:"),
         "'epochs' is a training setting. Fix: move it under train:"),
        (("    labels: study-cxr14", "    labels: study-cxr14\n    bootstrap: 50"), "under evaluation:"),
    ],
)
def test_a_known_key_in_the_wrong_place_says_where_it_goes(tmp_path, change, expected):
    """A new user put `mapping:` at the dataset's level (as docs/own-data.md showed): "remove it" would
    lose the mapping, so the message says where it belongs."""
    old, new = change
    assert old in BASE
    msg = str(error_of(tmp_path, BASE.replace(old, new, 1)))
    assert expected in msg and "remove it" not in msg, msg
