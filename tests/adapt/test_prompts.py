"""adapt.prompts: the shipped prompt set and prompt files of one's own (templates x terms, verbatim
sides, bounded, every problem one error naming the file and line)."""

from __future__ import annotations

import pytest

from cxrbench.adapt.prompts import MAX_PROMPTS, load_prompts
from cxrbench.common.errors import InputError
from cxrbench.index.findings import ALL_FINDINGS


def test_the_shipped_set_covers_every_canonical_finding_and_never_negates_a_negation():
    ps = load_prompts()
    assert ps.source == "cxrbench" and len(ps.sha256) == 64 and ps.spec.version and ps.spec.format == 1
    pairs = ps.pairs(list(ALL_FINDINGS))
    assert [p.finding for p in pairs] == list(ALL_FINDINGS)
    for p in pairs:
        assert p.positive and p.negative and not set(p.positive) & set(p.negative)
        assert all("{}" not in t for t in (*p.positive, *p.negative))
    no_finding = ps.pair("no_finding")
    assert not any(t.startswith("no no") or "no finding" in t for t in (*no_finding.positive,
                                                                        *no_finding.negative))
    card = ps.pair("cardiomegaly")  # templates x terms, templates first
    assert card.positive[:2] == ("cardiomegaly", "enlarged heart") and "no cardiomegaly" in card.negative
    described = ps.describe(["cardiomegaly", "no_finding"])
    assert described["entries"]["cardiomegaly"] == {"terms": ["cardiomegaly", "enlarged heart"]}
    assert set(described["entries"]["no_finding"]) == {"positive", "negative"}
    assert described["name"] == "cxrbench" and described["sha256"] == ps.sha256


def write(tmp_path, text: str, name: str = "prompts.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """format: 1
name: mine
version: 3
templates:
  positive: ["{}", "x-ray with {}"]
  negative: ["no {}"]
findings:
  effusion_like: {terms: [fluid, effusion]}
  own: {terms: [a], negative: [clear lungs]}
  verbatim: {positive: [sick], negative: [healthy]}
"""


def test_a_file_of_ones_own_fills_templates_and_keeps_verbatim_sides(tmp_path):
    ps = load_prompts(write(tmp_path, GOOD))
    assert ps.source == str((tmp_path / "prompts.yaml").resolve()) and ps.spec.version == "3"
    e = ps.pair("effusion_like")
    assert e.positive == ("fluid", "effusion", "x-ray with fluid", "x-ray with effusion")
    assert e.negative == ("no fluid", "no effusion")
    own = ps.pair("own")
    assert own.positive == ("a", "x-ray with a") and own.negative == ("clear lungs",)
    assert ps.pair("verbatim").positive == ("sick",) and ps.label() == "mine 3"
    with pytest.raises(InputError, match=r"no prompts for effusion \(the file has 'effusion_like'\), x") as e:
        ps.pairs(["effusion", "own", "x"])
    assert e.value.where == ps.source and "zeroshot_prompts" in e.value.fix
    other = load_prompts(write(tmp_path, GOOD.replace("sick", "ill"), "b.yaml"))
    assert other.sha256 != ps.sha256  # the content, not the name


@pytest.mark.parametrize("change,match,line", [
    (("  own: {terms: [a], negative: [clear lungs]}\n", "  own: {trems: [a]}\n"),
     "unknown key 'findings.own.trems'", 9),
    (('  negative: ["no {}"]', '  negative: ["no"]'), "must hold '{}'", 6),
    (("  verbatim: {positive: [sick], negative: [healthy]}", "  verbatim: {positive: [sick]}"),
     "both 'positive' and 'negative'", 10),
    (("format: 1", "format: 2"), "format 2 is not one this cxrbench reads", 1),
    (("name: mine\n", ""), "key 'name' is required", None),
    (("[sick]", "[sick, sick]"), "lists a prompt twice", 10),
    (("[sick]", "['']"), "not a non-empty string", 10),
    (("version: 3\n", "version: 3\nversion: 4\n"), "given twice", 4),
])
def test_bad_files_are_one_error_naming_file_line_and_key(tmp_path, change, match, line):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(InputError, match=match) as e:
        load_prompts(path)
    assert str(path) in e.value.where and (line is None or e.value.where.endswith(f"line {line}"))


def test_prompt_files_are_bounded(tmp_path):
    terms = ", ".join(f"t{i}" for i in range(MAX_PROMPTS))
    with pytest.raises(InputError, match="make more than"):
        load_prompts(write(tmp_path, GOOD.replace("[fluid, effusion]", f"[{terms}]")))
    with pytest.raises(InputError, match="characters"):
        load_prompts(write(tmp_path, GOOD.replace("[sick]", f"[{'s' * 400}]")))
    with pytest.raises(InputError, match="not a mapping"):
        load_prompts(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(InputError, match="no 'templates'"):
        load_prompts(write(tmp_path, GOOD.split("templates:")[0] + "findings:\n  x: {terms: [a]}\n"))
    with pytest.raises(InputError):
        load_prompts(tmp_path / "missing.yaml")
