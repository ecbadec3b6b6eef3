"""VinDr-PCXR (Pham et al., Scientific Data 2023, "PediCXR: An open, large-scale chest radiograph
dataset for interpretation of common thoracic diseases in children"; PhysioNet ``vindr-pcxr/1.0.0``,
restricted access).

9,125 pediatric (under 10 years) PA chest radiographs from Vietnam, 2020-2021, DICOM; official split
train 7,728 / test 1,397 (PhysioNet page). Layout (as unpacked; also accepted under ``annotations/``):
``image_labels_train.csv``, ``image_labels_test.csv`` (wide: ``image_id, rad_ID`` + 15 diagnosis
columns of 0/1, spelled as released: ``No finding, Bronchitis, Brocho-pneumonia, Other disease,
Bronchiolitis, Situs inversus, Pneumonia, Pleuro-pneumonia, Diagphramatic hernia, Tuberculosis,
Congenital emphysema, CPAM, Hyaline membrane disease, Mediastinal tumor, Lung tumor``),
``annotations_train.csv``, ``annotations_test.csv`` (``image_id, rad_id, class_name, x_min, y_min,
x_max, y_max``: one box per local finding, 36 local labels), images ``train/<image_id>.dicom`` and
``test/<image_id>.dicom``. Terms map through ``terms.PCXR_TERMS`` (the diagnoses onto pediatric
findings such as ``bronchiolitis``; the local labels with a canonical name feed the regions table,
the rest are counted in the report).

Readers: an image is read by one radiologist; several rows of an image are aggregated with
``--readers`` as in VinDr-CXR. No patient id is published (the image is the patient); no sex or age
outside the DICOM headers; view PA (the dataset holds PA scans only). Split: official train/test, val
carved from train.
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.index.sources.base import IndexOptions, SourceData, register_file
from cxrbench.index.sources.tables import find_file
from cxrbench.index.sources.terms import PCXR_TERMS
from cxrbench.index.sources.vindr import WIDE_FILES, image_frame, read_regions, read_wide


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read VinDr-PCXR's image labels and boxes (see module docstring)."""
    report: dict = {"readers": opts.readers}
    dirs = [root, root / "annotations"]
    if opts.labels_file is not None:
        files = {"train": opts.labels_file}
        test = find_file([opts.labels_file.parent], [WIDE_FILES["test"]], "", required=False)
        if test is not None and test != opts.labels_file:
            files["test"] = test
    else:
        files = {
            "train": find_file(
                dirs,
                [WIDE_FILES["train"]],
                "VinDr-PCXR label file image_labels_train.csv",
                option="--labels-file (image_labels_train.csv)",
            )
        }
        test = find_file(dirs, [WIDE_FILES["test"]], "", required=False)
        if test is not None:
            files["test"] = test
    parts = []
    for role, path in files.items():
        register_file(report, role, path)
        ids, findings, block, readers = read_wide(path, opts.readers, report, role, PCXR_TERMS, "VinDr-PCXR")
        report.setdefault("max_readers", {})[role] = readers
        parts.append((role, ids, findings, block))
    findings, block, frame = image_frame(root, parts, files, report)
    report["label_source"] = (
        "pediatric radiologists' image-level diagnoses (0/1); on the test set the curated reading"
    )
    regions = read_regions(files, report, terms=PCXR_TERMS)
    return SourceData(
        "vindr-pcxr",
        frame,
        findings,
        block,
        blank_is_unknown=False,
        report=report,
        regions=regions,
    )
