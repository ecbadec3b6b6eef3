import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.findings import (
    ALL_FINDINGS,
    CONTRACT_FINDINGS,
    PRESETS,
    check_finding_name,
    derivable,
    is_canonical,
    kleene_or,
    resolve_labels,
    sort_findings,
)
from cxrbench.index.sources.terms import (
    NIH_TERMS,
    PADCHEST_TERMS,
    SOURCE_TERMS,
    VINDR_TERMS,
    render_findings_table,
    sync_doc,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def test_study_label_sets_have_the_papers_sizes():
    sizes = {
        "study-vindr": 11,
        "study-cxr14": 14,
        "study-chexpert": 10,
        "study-padchest": 17,
        "study-mimic": 7,
        "study-vindr-mimic": 8,
        "study-cxr14-mimic": 7,
        "study-padchest-mimic": 7,
        # cxrbench's own (issue 24): the pediatric cohort and the external sets with localization truth
        "study-vindr-pcxr": 6,
        "rsna": 3,
        "siim": 1,
        "nih-google": 4,
    }
    assert {k: len(v) for k, v in PRESETS.items()} == sizes
    for name, findings in PRESETS.items():
        assert len(set(findings)) == len(findings), name
        assert all(f in ALL_FINDINGS for f in findings), name


def test_mimic_shared_sets_are_intersections_with_the_mimic_set():
    mimic = set(SOURCE_TERMS["mimic"][t][0] for t in SOURCE_TERMS["mimic"])
    for target in ("cxr14", "padchest", "vindr"):
        shared = set(PRESETS[f"study-{target}-mimic"])
        assert shared <= set(PRESETS[f"study-{target}"]) and shared <= mimic
    # the study's MIMIC set is what the shared sets have in common
    assert set(PRESETS["study-mimic"]) == set.intersection(
        *(set(PRESETS[f"study-{t}-mimic"]) for t in ("cxr14", "padchest", "vindr"))
    )
    assert "infiltration" not in PRESETS["study-cxr14"]


def test_term_tables_target_canonical_names_only():
    for source, table in SOURCE_TERMS.items():
        for term, targets in table.items():
            assert all(t in ALL_FINDINGS for t in targets), (source, term)


@pytest.mark.parametrize(
    "term,not_in",
    [
        ("pericardial effusion", "pleural_effusion"),
        ("pseudonodule", "nodule"),
        ("subcutaneous emphysema", "emphysema"),
        ("mediastinal mass", "mass"),
        ("breast mass", "mass"),
        ("soft tissue mass", "mass"),
    ],
)
def test_padchest_lookalikes_do_not_feed_the_lookalike_finding(term, not_in):
    assert not_in not in PADCHEST_TERMS[term]


def test_padchest_explicit_multi_target_terms():
    assert set(PADCHEST_TERMS["hydropneumothorax"]) == {"pneumothorax", "pleural_effusion"}
    assert "fracture" in PADCHEST_TERMS["callus rib fracture"]
    assert PADCHEST_TERMS["hiatal hernia"] == ("hernia",)
    assert PADCHEST_TERMS["normal"] == ("no_finding",)


def test_every_real_padchest_term_is_in_the_table(xrv_data_dir):
    labels = pd.read_csv(xrv_data_dir / PADCHEST_CSV, usecols=["Labels"])["Labels"].dropna().unique()
    terms = {t.strip() for s in labels for t in ast.literal_eval(s)} - {""}
    assert len(terms) >= 190
    assert terms == set(PADCHEST_TERMS), terms ^ set(PADCHEST_TERMS)


def test_nih_and_vindr_tables_cover_their_releases(xrv_data_dir):
    nih = pd.read_csv(xrv_data_dir / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    tokens = {t for s in nih["Finding Labels"].unique() for t in s.split("|")}
    assert tokens == set(NIH_TERMS)
    vin = pd.read_csv(xrv_data_dir / "vinbigdata-train.csv.gz", usecols=["class_name"])
    assert set(vin["class_name"].unique()) <= set(VINDR_TERMS)


def test_resolve_labels_presets_lists_and_derivation():
    nih = [NIH_TERMS[t][0] for t in NIH_TERMS]
    got = resolve_labels("study-padchest-mimic", nih)
    assert got == list(PRESETS["study-padchest-mimic"])
    assert "nodule_mass" in resolve_labels("all", nih)  # derivable from nodule + mass
    assert resolve_labels("cardiomegaly,nodule_mass", nih) == ["cardiomegaly", "nodule_mass"]
    assert resolve_labels("cardiomegaly", nih) == ["cardiomegaly"]
    assert resolve_labels("study-mimic,edema,cardiomegaly", nih) == [*PRESETS["study-mimic"], "edema"]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("study-vindr", "does not provide finding.*lung_opacity"),
        ("study-cxr", "did you mean 'study-cxr14'"),
        ("", "neither a preset nor a finding list"),
        ("cardiomegaly,scoliosis", "scoliosis"),
    ],
)
def test_resolve_labels_errors_name_the_problem(spec, match):
    nih = [NIH_TERMS[t][0] for t in NIH_TERMS]
    with pytest.raises(InputError, match=match):
        resolve_labels(spec, nih, "nih")


def test_kleene_or_three_valued():
    nan = np.nan
    a = np.array([1, 0, 0, nan, nan, 1, 0], dtype=np.float32)
    b = np.array([0, 0, nan, nan, 1, nan, 1], dtype=np.float32)
    got = kleene_or([a, b])
    want = np.array([1, 0, nan, nan, 1, 1, 1], dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


def test_derivable_and_sides():
    assert derivable(["nodule", "mass"]) == {"nodule_mass": ("nodule", "mass")}
    assert derivable(["nodule_mass", "nodule", "mass"]) == {}
    assert derivable(["atelectasis_left", "atelectasis_right"]) == {
        "atelectasis": ("atelectasis_left", "atelectasis_right")
    }
    assert is_canonical("pleural_effusion_left") and is_canonical("pneumonia_right")
    assert not is_canonical("pneumonia_middle")
    assert sort_findings(["pneumonia_right", "cardiomegaly", "pneumonia", "no_finding"]) == [
        "no_finding",
        "cardiomegaly",
        "pneumonia",
        "pneumonia_right",
    ]


def test_check_finding_name_suggests_and_allows_declared_extras():
    with pytest.raises(InputError, match="did you mean 'cardiomegaly'"):
        check_finding_name("cardiomegally", where="m.yaml")
    assert check_finding_name("hilar_enlargement", where="m.yaml", extra=["hilar_enlargement"])
    assert set(CONTRACT_FINDINGS) <= set(ALL_FINDINGS)


def test_docs_table_is_in_sync_with_the_term_tables():
    assert sync_doc(DOC, check=True), "run: python -m cxrbench.index.sources.terms docs/datasets.md"
    table = render_findings_table()
    for f in ALL_FINDINGS:
        assert f"| `{f}` |" in table
    assert "`pseudonodule`" in table.split("feed no finding")[1]


def test_expand_label_spec_is_the_one_label_spec_parser():
    from cxrbench.index.findings import PRESETS, expand_label_spec

    assert expand_label_spec("all") is None
    assert expand_label_spec("study-mimic") == list(PRESETS["study-mimic"])
    assert expand_label_spec("study-mimic, edema,cardiomegaly") == [*PRESETS["study-mimic"], "edema"]
    assert expand_label_spec("edema,edema") == ["edema"]
