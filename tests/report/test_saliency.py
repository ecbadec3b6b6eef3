"""report.saliency: the thumbnails of the top true/false positives as HTML (inline) and Markdown (files)."""

import base64

import numpy as np
import pandas as pd
import pytest

from cxrbench.report.saliency import gallery_html, gallery_markdown

pytest.importorskip("pytorch_grad_cam")


def examples():
    from cxrbench.evaluate.saliency import overlay, png_bytes

    rng = np.random.default_rng(0)
    rows = []
    for f in ("cardiomegaly", "edema"):
        for kind in ("true_positive", "false_positive"):
            for rank in (1, 2):
                gray = rng.integers(0, 255, (32, 32), dtype=np.uint8)
                png = png_bytes(overlay(gray, rng.random((32, 32)).astype(np.float32)), 24)
                rows.append(
                    {
                        "finding": f,
                        "kind": kind,
                        "rank": rank,
                        "image_id": f"{f}-{kind}-{rank}",
                        "patient_id": "p",
                        "score": 0.9 - 0.1 * rank,
                        "threshold": 0.5,
                        "png": png,
                    }
                )
    return pd.DataFrame(rows)


def test_html_embeds_every_thumbnail_and_markdown_links_files():
    ex = examples()
    html = gallery_html(ex)
    assert html.count("<img") == 8 and html.count("<figure>") == 2 and "top false positives" in html
    assert base64.b64encode(ex["png"].iloc[0]).decode() in html and "http" not in html
    md, files = gallery_markdown(ex, folder="figures/sal")
    assert len(files) == 8 and "figures/sal/edema_false_positive_2.png" in files
    assert "(figures/sal/cardiomegaly_true_positive_1.png)" in md and md.count("![") == 8
    assert gallery_html(ex.iloc[:0]) == "" and gallery_markdown(ex.iloc[:0]) == ("", {})
