import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index

HEAD = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)


def write(root, n=4):
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg,Male,50,Frontal,PA,1.0" + "," * 13
        for p in range(1, n + 1)
    ]
    (root / "train.csv").write_text("\n".join([HEAD, *rows]) + "\n")
    return root


DEMO = pd.DataFrame(
    {
        "PATIENT": ["patient00001", "patient00002", "patient00003", "patient00003"],
        "GENDER": ["Male"] * 4,
        "AGE_AT_CXR": [50] * 4,
        "PRIMARY_RACE": ["White", "Patient Refused", "Asian", "Black or African American"],
        "ETHNICITY": ["Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown", "Unknown"],
    }
)


@pytest.mark.parametrize("name", ["CHEXPERT DEMO.xlsx", "CHEXPERT DEMO.csv"])
def test_race_and_ethnicity_joined_by_patient(tmp_path, name):
    pytest.importorskip("openpyxl")
    root = write(tmp_path / "c")
    (DEMO.to_excel if name.endswith("xlsx") else DEMO.to_csv)(root / name, index=False)
    df, findings, report = build_index("chexpert", root, split_mode="hash", split_fractions="1,0,0")
    assert list(df.columns[9:11]) == ["race", "ethnicity"] and "race" not in findings
    race = df.set_index("patient_id")["race"]
    assert race["patient00001"] == "White" and pd.isna(race["patient00002"])  # refused: not known
    assert pd.isna(race["patient00003"]) and pd.isna(race["patient00004"])  # conflicting; not in the table
    info = report["demographics"]
    assert info["race"]["patients_with_conflicting_values"] == 1 and info["patients_not_in_table"] == 1
    assert df.set_index("patient_id")["ethnicity"]["patient00002"] == "Hispanic/Latino"


def test_without_the_table_the_index_is_unchanged(tmp_path):
    df, _, report = build_index("chexpert", write(tmp_path / "c"), split_mode="hash", split_fractions="1,0,0")
    assert "race" not in df.columns and "demographics" not in report


def test_a_table_without_race_columns_is_refused(tmp_path):
    root = write(tmp_path / "c")
    pd.DataFrame({"PATIENT": ["patient00001"], "GENDER": ["Male"]}).to_csv(
        root / "CHEXPERT DEMO.csv", index=False
    )
    with pytest.raises(InputError, match="neither PRIMARY_RACE nor ETHNICITY"):
        build_index("chexpert", root, split_mode="hash", split_fractions="1,0,0")


def test_phantom_sheet_round_trips(tmp_path):
    from cxrbench.phantom import generate

    truth = generate(tmp_path / "c", "chexpert", 30, size=32, seed=3, quiet=True, demographics=True)
    df, _, report = build_index("chexpert", tmp_path / "c", views="all")
    m = truth.merge(df, on="image_id")
    assert len(m) == len(truth) and report["demographics"]["patients_not_in_table"] == 0
    for col in ("race", "ethnicity"):
        a, b = m[f"{col}_x"], m[f"{col}_y"]
        assert ((a == b) | (a.isna() & b.isna())).all(), col
    assert m["race_y"].notna().any() and m["race_y"].isna().any()  # 'Unknown' read as missing
