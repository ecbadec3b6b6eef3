from pathlib import Path

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources.custom import load_mapping

UKA = Path(__file__).resolve().parents[3] / "configs" / "uka-cxr.yaml"
UKA_HEADER = (
    "image_path,patient_id,exam_id,split,sex,age,cardiomegaly,congestion,pleural_effusion_left,"
    "pleural_effusion_right,pneumonic_infiltrates_left,pneumonic_infiltrates_right,atelectasis_left,"
    "atelectasis_right"
)
UKA_ROWS = [
    "img/a.png,p1,e1,train,M,70,3,0,0,4,0,0,1,0",
    "img/b.png,p1,e2,train,M,70,0,0,0,0,0,0,0,0",
    "img/c.png,p2,e3,test,F,55,2,4,3,3,0,2,0,0",
    "img/d.png,p3,e4,val,F,61,0,0,0,0,,0,0,0",
]


def uka(root, rows=UKA_ROWS, header=UKA_HEADER):
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def mapping(tmp_path, text):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_uka_config_graded_sides_and_derived_healthy(tmp_path):
    uka(tmp_path)
    df, findings, _ = build_index("csv", tmp_path, mapping=UKA, views="all")
    # `all` = the 9 mapped findings + the side-combined ones derivable from them
    assert findings == [
        "no_finding",
        "atelectasis",
        "atelectasis_left",
        "atelectasis_right",
        "cardiomegaly",
        "pleural_effusion",
        "pleural_effusion_left",
        "pleural_effusion_right",
        "pneumonia",
        "pneumonia_left",
        "pneumonia_right",
        "congestion",
    ]
    d = df.set_index("image_id")
    assert d.loc["img/a.png", "cardiomegaly"] == 1 and d.loc["img/a.png", "pleural_effusion_right"] == 1
    assert d.loc["img/a.png", "atelectasis_left"] == 0  # grade 1 < 3
    assert d.loc["img/b.png", "no_finding"] == 1 and d.loc["img/a.png", "no_finding"] == 0
    assert np.isnan(d.loc["img/d.png", "pneumonia_left"])  # blank -> unknown (default)
    assert np.isnan(d.loc["img/d.png", "no_finding"])  # an unknown finding leaves healthy unknown
    assert (df["dataset"] == "uka_cxr").all() and (df["view"] == "AP_SUPINE").all()
    assert d.loc["img/c.png", "split"] == "test" and d.loc["img/c.png", "study_id"] == "e3"


def test_side_combined_findings_for_the_mimic_arm(tmp_path):
    uka(tmp_path)
    df, findings, _ = build_index(
        "csv", tmp_path, mapping=UKA, labels="no_finding,cardiomegaly,pleural_effusion,pneumonia,atelectasis"
    )
    d = df.set_index("image_id")
    assert d.loc["img/c.png", "pleural_effusion"] == 1 and d.loc["img/a.png", "pleural_effusion"] == 1
    assert d.loc["img/b.png", "pneumonia"] == 0 and np.isnan(d.loc["img/d.png", "pneumonia"])


def test_values_map_uncertain_merge_and_hash_split(tmp_path):
    (tmp_path / "l.csv").write_text(
        "file;pid;eff_l;eff_r;card\nx/1.png;a;yes;no;0\nx/2.png;b;no;no;?\nx/3.png;c;unsure;no;1\n"
    )
    m = mapping(
        tmp_path,
        """
name: my_set
file: l.csv
separator: ";"
columns: {path: file, patient: pid}
default_view: PA
labels:
  pleural_effusion: {left: eff_l, right: eff_r, values: {"yes": 1, "no": 0, unsure: uncertain}, sides: merge}
  cardiomegaly: {column: card, values: {0: 0, 1: 1}, uncertain: ["?"]}
""",
    )
    for policy, want in (("zeros", 0.0), ("ones", 1.0), ("ignore", np.nan)):
        df, findings, report = build_index("csv", tmp_path, mapping=m, uncertain=policy)
        assert findings == ["cardiomegaly", "pleural_effusion"]  # sides merged, not kept
        d = df.set_index("image_id")
        np.testing.assert_equal(d.loc["x/3.png", "pleural_effusion"], want)
        np.testing.assert_equal(d.loc["x/2.png", "cardiomegaly"], want)
        assert d.loc["x/1.png", "pleural_effusion"] == 1
        assert report["split"]["method"].startswith("stratified")
    assert report["label_definition"] == (
        "Labels: from the CSV as the mapping says (pleural_effusion: column eff_l/eff_r: 'yes' = "
        "positive; 'no' = negative; 'unsure' = uncertain; blank = unknown | cardiomegaly: column card: "
        "'0' = negative; '1' = positive; '?' = uncertain; blank = unknown); uncertain counted as unknown "
        "(left out of training loss and metrics) (2 values).")


@pytest.mark.parametrize(
    "text,match",
    [
        ("name: x\ncolumns: {path: a, patient: b}\nlabels: {}\nextra: 1\n", "line 4: unknown key 'extra'"),
        ("name: x\ncolumns: {path: a, patient: b, subject: c}\nlabels: {}\n",
         "unknown key 'columns.subject'"),
        ("name: x\ncolumns: {path: a}\nlabels: {}\n", "columns.patient: Field required"),
        ("name: X y\ncolumns: {path: a, patient: b}\nlabels: {}\n", "name: String should match"),
        (
            "name: x\ncolumns: {path: a, patient: b}\nlabels: {cardiomegaly: {column: c}}\n",
            "exactly one of positive_at",
        ),
        (
            "name: x\ncolumns: {path: a, patient: b}\nlabels: {cardiomegally: {column: c, positive_at: 3}}\n",
            "did you mean 'cardiomegaly'",
        ),
        (
            "name: x\ncolumns: {path: a, patient: b}\nviews: {lat: SIDE}\nlabels: {}\n",
            "views: Value error|view 'SIDE'",
        ),
        (
            "name: x\ncolumns: {path: a, patient: b}\nlabels: {cardiomegaly: {derive: none_of_the_others}}\n",
            "derive is only for no_finding",
        ),
        ("[1, 2]\n", "must be a YAML dictionary"),
        ("name: x\ncolumns: {path: a, patient: b\n", "invalid YAML"),
        ("name: x\ncolums: {path: a, patient: b}\nlabels: {}\n",
         r"line 2: unknown key 'colums'.*did you mean 'columns'"),
        ("name: x\nname: y\ncolumns: {path: a, patient: b}\nlabels: {}\n",
         r"'name' is given twice \(lines 1 and 2\)"),
        ("name: x\ncolumns: {path: a, patient: b}\n"
         "labels: {edema: {column: e, positive_at: 3, scale: [4, 0]}}\n", "lowest < highest"),
    ],
)
def test_mapping_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        load_mapping(mapping(tmp_path, text))


@pytest.mark.parametrize(
    "rows,match",
    [
        (
            UKA_ROWS + ["img/e.png,p4,e5,train,M,1,x,0,0,0,0,0,0,0"],
            "line 6: non-numeric value 'x' in column 'cardiomegaly'",
        ),
        (UKA_ROWS + ["../e.png,p4,e5,train,M,1,0,0,0,0,0,0,0,0"], "escapes the dataset root"),
        (UKA_ROWS + ["/abs/e.png,p4,e5,train,M,1,0,0,0,0,0,0,0,0"], "absolute"),
        (UKA_ROWS + ["img/a.png,p9,e5,train,M,1,0,0,0,0,0,0,0,0"], "duplicated image_path 'img/a.png'"),
        (UKA_ROWS + ["img/f.png,p1,e5,test,M,1,0,0,0,0,0,0,0,0"], "patient 'p1' is in splits test\\+train"),
        (UKA_ROWS + ["img/g.png,p5,e6,holdout,M,1,0,0,0,0,0,0,0,0"], "unknown split value 'holdout'"),
    ],
)
def test_bad_rows(tmp_path, rows, match):
    uka(tmp_path, rows)
    with pytest.raises(InputError, match=match):
        build_index("csv", tmp_path, mapping=UKA)


def test_unknown_value_in_values_map_and_missing_column(tmp_path):
    (tmp_path / "l.csv").write_text("p,pid,c\na.png,1,maybe\n")
    m = mapping(
        tmp_path,
        "name: s\nfile: l.csv\ncolumns: {path: p, patient: pid}\n"
        "labels: {cardiomegaly: {column: c, values: {yes: 1, no: 0}}}\n",
    )
    with pytest.raises(InputError, match="line 2: unknown label value 'maybe' in column 'c'"):
        build_index("csv", tmp_path, mapping=m)
    m2 = mapping(tmp_path, "name: s\nfile: l.csv\ncolumns: {path: p, patient: patient}\nlabels: {}\n")
    with pytest.raises(InputError, match="missing required column.*'patient'"):
        build_index("csv", tmp_path, mapping=m2)
    with pytest.raises(InputError, match="needs --mapping"):
        build_index("csv", tmp_path)


def test_a_grade_outside_the_scale_is_refused_unless_the_mapping_says_so(tmp_path):
    (tmp_path / "l.csv").write_text("p,pid,c\na.png,1,0\nb.png,2,7\nc.png,3,4\n")
    text = "name: s\nfile: l.csv\ncolumns: {path: p, patient: pid}\ndefault_view: PA\n" \
           "labels: {cardiomegaly: {column: c, positive_at: 3%s}}\n"
    with pytest.raises(InputError, match=r"l.csv, line 3: grade '7' in column 'c' is outside the label's "
                                         r"scale 0-4"):
        build_index("csv", tmp_path, mapping=mapping(tmp_path, text % ""))
    df, _, _ = build_index("csv", tmp_path, mapping=mapping(tmp_path, text % ", scale: [0, 10]"))
    assert df["cardiomegaly"].tolist() == [0.0, 1.0, 1.0]


def test_errors_use_the_file_own_line_numbers(tmp_path):
    """A blank line and a quoted field across lines: the error names the line an editor shows."""
    (tmp_path / "l.csv").write_text('p,pid,note,c\na.png,1,ok,0\n\nb.png,2,"two\nlines",1\n../x.png,3,ok,1\n')
    m = mapping(tmp_path, "name: s\nfile: l.csv\ncolumns: {path: p, patient: pid}\ndefault_view: PA\n"
                          "labels: {edema: {column: c, positive_at: 1}}\n")
    with pytest.raises(InputError, match=r"l.csv, line 6: path '../x.png' in column 'p' .* escapes"):
        build_index("csv", tmp_path, mapping=m)


def test_first_contact_messages_name_the_real_cause(tmp_path):
    (tmp_path / "l.csv").write_text("p,pid,c\n")
    m = mapping(tmp_path, "name: s\nfile: l.csv\ncolumns: {path: p, patient: pid}\n"
                          "labels: {edema: {column: c, positive_at: 1}}\n")
    with pytest.raises(InputError, match="no data rows"):  # not a --views problem
        build_index("csv", tmp_path, mapping=m)
    (tmp_path / "l.csv").write_text("p,pid,c\na.png,1,0\nb.png,2,1\n")
    with pytest.raises(InputError, match="views UNKNOWN .*set default_view"):  # no view column
        build_index("csv", tmp_path, mapping=m)


def test_mapping_mistakes_say_fix_the_mapping_and_names_must_be_snake_case(tmp_path):
    (tmp_path / "l.csv").write_text("p,pid,c\na.png,1,0\n")
    m = mapping(tmp_path, "name: s\nfile: l.csv\ncolumns: {path: path, patient: pid}\ndefault_view: PA\n"
                          "labels: {edema: {column: c, positive_at: 1}}\n")
    with pytest.raises(InputError, match="missing required column.*'path'.*Fix: fix the column names in the "
                                         "mapping"):
        build_index("csv", tmp_path, mapping=m)
    bad = mapping(tmp_path, "name: s\nfile: l.csv\ncolumns: {path: p, patient: pid}\n"
                            "labels: {COVID-19: {column: c, values: {0: 0, 1: 1}}}\n"
                            "extra_findings: [COVID-19]\n")
    with pytest.raises(InputError, match="'COVID-19' is not a snake_case finding name.*'covid_19'"):
        load_mapping(bad)


COVID = ("path,pid,modality,view,sex,age,finding\n"
         "x/1.png,p1,X-ray,PA,M,50,COVID-19\n"
         "x/2.png,p2,CT,Axial,F,60,COVID-19\n"          # line 3: a CT row (its view is no X-ray view)
         "x/3.png,p3,X-ray,AP,F,40,No Finding\n"
         "x/1.png,p1,X-ray,PA,M,50,COVID-19\n"          # line 5: x/1.png again
         "x/4.png,p4,X-ray,PA,M,70,Pneumonia\n"
         "x/3.png,p3,X-ray,AP,F,40,No Finding\n"        # line 7: x/3.png again
         "x/5.png,p5,X-ray,bogus,M,30,COVID-19\n")      # line 8: an unknown view


def _covid_mapping(tmp_path, extra=""):
    return mapping(tmp_path, "name: covid\nfile: l.csv\ncolumns: {path: path, patient: pid, view: view, "
                             "sex: sex, age: age}\nviews: {PA: PA, AP: AP}\n"
                             "labels: {pneumonia: {column: finding, values: {COVID-19: 1, Pneumonia: 1, "
                             "'No Finding': 0}}}\n" + extra)


def test_duplicate_rows_are_listed_and_keep_first_is_the_way_through(tmp_path):
    (tmp_path / "l.csv").write_text(COVID.replace("x/5.png,p5,X-ray,bogus", "x/5.png,p5,X-ray,PA")
                                    .replace("x/2.png,p2,CT,Axial", "x/2.png,p2,CT,PA"))
    with pytest.raises(InputError) as err:
        build_index("csv", tmp_path, mapping=_covid_mapping(tmp_path))
    msg = err.value.one_line()
    assert "duplicated path 'x/1.png' (line 2, line 5); 'x/3.png' (line 4, line 7) (2 value(s) listed more " \
           "than once, in 4 rows)" in msg and "duplicates: keep_first" in msg
    df, _, report = build_index("csv", tmp_path, mapping=_covid_mapping(tmp_path, "duplicates: keep_first\n"))
    assert sorted(df["image_id"]) == ["x/1.png", "x/2.png", "x/3.png", "x/4.png", "x/5.png"]
    assert report["dropped"]["duplicates"] == 2
    assert any("2 later row(s)" in w and "'x/1.png', 'x/3.png'" in w for w in report["warnings"])


def test_row_filters_keep_xray_rows_and_messages_keep_the_csv_lines(tmp_path):
    (tmp_path / "l.csv").write_text(COVID)
    m = _covid_mapping(tmp_path, "duplicates: keep_first\nkeep_rows: {modality: [X-ray]}\n")
    with pytest.raises(InputError, match=r"l.csv, line 8: unknown view 'bogus'"):  # line 8, after a filter
        build_index("csv", tmp_path, mapping=m)
    m = _covid_mapping(tmp_path, "duplicates: keep_first\nkeep_rows: {modality: [X-ray]}\n"
                                 "drop_rows: {view: [bogus]}\n")
    df, _, report = build_index("csv", tmp_path, mapping=m)
    assert sorted(df["image_id"]) == ["x/1.png", "x/3.png", "x/4.png"]  # no CT row, no repeat
    assert report["dropped"]["rows"] == {"modality not in ['X-ray']": 1, "view in ['bogus']": 1}
    with pytest.raises(InputError, match="leave no row"):
        build_index("csv", tmp_path, mapping=_covid_mapping(tmp_path, "keep_rows: {modality: [MRI]}\n"))
    with pytest.raises(InputError, match="missing required column.*'kind'"):
        build_index("csv", tmp_path, mapping=_covid_mapping(tmp_path, "keep_rows: {kind: [X-ray]}\n"))
