"""The report from synthetic results: files, columns, statistics, and a headless-Chromium render."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.report import main_table_text, write_report
from cxrbench.report.protocol import (
    ComparisonFacts,
    DatasetFacts,
    EvaluationFacts,
    Protocol,
    RecipeFacts,
    RunFacts,
)
from cxrbench.report.results import MEAN, RESULT_COLUMNS, StudyResults, adjust_main_family, stars
from cxrbench.stats.significance import benjamini_hochberg

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CONTRACT_COLUMNS = [
    "dataset",
    "init",
    "finding",
    "auroc",
    "auroc_lo",
    "auroc_hi",
    "p_vs_reference",
    "p_adjusted",
]


def synthetic(
    seed: int = 0,
    datasets=("vindr", "cxr14"),
    inits=("dinov2", "imagenet", "mimic"),
    findings=("cardiomegaly", "pleural_effusion", "pneumothorax"),
    recipes=("r224",),
    reference: str | None = "imagenet",
    external: bool = True,
    missing=(),
) -> StudyResults:
    """Results of a made-up study: AUROCs from a seeded generator, ROC curves of a binormal model."""
    rng = np.random.default_rng(seed)
    rows, roc, curves, ext, summ, prev = [], {}, [], [], [], []
    shift = {i: 0.06 * k for k, i in enumerate(inits)}
    for r in recipes:
        for d in datasets:
            for i in inits:
                aucs = []
                for f in findings:
                    a = float(np.clip(0.72 + shift[i] + rng.normal(0, 0.02), 0.55, 0.98))
                    aucs.append(a)
                    row = {
                        "dataset": d,
                        "recipe": r,
                        "seed": 0,
                        "init": i,
                        "finding": f,
                        "auroc": a,
                        "auroc_lo": a - 0.03,
                        "auroc_hi": a + 0.03,
                        "n": 400,
                        "n_positive": 40,
                    }
                    if reference and i != reference:
                        diff = a - 0.72 - shift[reference]
                        row.update(
                            diff_vs_reference=diff,
                            diff_lo=diff - 0.03,
                            diff_hi=diff + 0.03,
                            p_vs_reference=float(rng.uniform(0, 0.2)),
                        )
                    rows.append(row)
                    x = np.linspace(0, 1, 60)
                    roc[(d, r, 0, i, f)] = (x, 1 - (1 - x) ** (a / (1 - a)))
                m = float(np.mean(aucs))
                row = {
                    "dataset": d,
                    "recipe": r,
                    "seed": 0,
                    "init": i,
                    "finding": MEAN,
                    "auroc": m,
                    "auroc_lo": m - 0.015,
                    "auroc_hi": m + 0.015,
                    "n": 400,
                    "n_findings": len(findings),
                }
                if reference and i != reference:
                    row.update(
                        diff_vs_reference=m - 0.75,
                        diff_lo=m - 0.77,
                        diff_hi=m - 0.73,
                        p_vs_reference=float(rng.uniform(0, 0.01)),
                    )
                rows.append(row)
                for e in range(1, 6):
                    curves.append(
                        {
                            "dataset": d,
                            "recipe": r,
                            "seed": 0,
                            "init": i,
                            "epoch": e,
                            "val_mean_auroc": 0.6 + 0.02 * e + shift[i],
                            "train_loss": 1.0 / e,
                        }
                    )
            if external:
                for b in datasets:
                    if b != d:
                        for i in inits:
                            ext.append(
                                {
                                    "train_dataset": d,
                                    "test_dataset": b,
                                    "recipe": r,
                                    "seed": 0,
                                    "init": i,
                                    "n_findings": 2,
                                    "auroc": 0.7,
                                    "auroc_lo": 0.67,
                                    "auroc_hi": 0.73,
                                }
                            )
    for d in datasets:
        for s, n in (("train", 700), ("val", 100), ("test", 200)):
            summ.append({"dataset": d, "split": s, "images": n, "patients": n // 2})
            for f in findings:
                prev.append(
                    {"dataset": d, "split": s, "finding": f, "n": n, "n_positive": n // 10, "prevalence": 0.1}
                )
    table = pd.DataFrame(rows)
    if reference:
        # per-finding rows: BH over the findings of one dataset and init (as the comparisons do)
        table["p_adjusted"] = np.nan
        per = table["finding"] != MEAN
        for _, idx in table[per].groupby(["dataset", "recipe", "init"]).groups.items():
            table.loc[idx, "p_adjusted"] = benjamini_hochberg(
                table.loc[idx, "p_vs_reference"].to_numpy(float)
            )
        table = adjust_main_family(table)
    pairs = pd.DataFrame()
    if reference is None:
        pairs = pd.DataFrame(
            [
                {
                    "dataset": d,
                    "recipe": r,
                    "seed": 0,
                    "init_a": a,
                    "init_b": b,
                    "finding": MEAN,
                    "diff": 0.01,
                    "diff_lo": -0.01,
                    "diff_hi": 0.03,
                    "p": 0.2,
                    "p_adjusted": 0.3,
                }
                for r in recipes
                for d in datasets
                for k, a in enumerate(inits)
                for b in inits[k + 1 :]
            ]
        )
    return StudyResults(
        name="synthetic",
        title="Synthetic study",
        inits=list(inits),
        datasets=list(datasets),
        table=table,
        reference=reference,
        init_names={"dinov2": "dinov2-vitb14", "imagenet": "imagenet21k-vitb16", "mimic": "domain:mimic"},
        recipes=list(recipes),
        seeds=[0],
        roc=roc,
        curves=pd.DataFrame(curves),
        external=pd.DataFrame(ext),
        summaries=pd.DataFrame(summ),
        prevalence=pd.DataFrame(prev),
        pairs=pairs,
        missing=list(missing),
        provenance={
            "config_hash": "0123abcd",
            "git_commit": "deadbeef",
            "created": "2025-01-01T00:00:00+00:00",
            "versions": {"cxrbench": "0.1.0", "torch": "2.x"},
            "bootstrap": {"seed": 7, "n_resamples": 1000, "cluster": "patient"},
            "weights": {
                "dinov2": {"init": "dinov2-vitb14", "file": "/w/model.safetensors", "sha256": "ab" * 32}
            },
        },
        protocol=synthetic_protocol(datasets, inits, findings, recipes, reference),
    )


def synthetic_protocol(datasets, inits, findings, recipes, reference) -> Protocol:
    settings = {"lr": 1e-5, "epochs": 100, "batch_size": 30, "weight_decay": 0.0, "hflip": 0.5, "rotate": 7.0,
                "patience": 10, "schedule": "cosine", "warmup_epochs": 1.0}
    runs = [RunFacts(dataset=d, init=i, init_name=f"{i}-vitb", arch="vit_base_patch16_224",
                     pretrained=True, weights=f"/w/{i}.safetensors", mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), linear_probe=False, n_findings=len(findings),
                     settings=settings, best_epoch=4, epochs_run=5)
            for d in datasets for i in inits]
    return Protocol(
        datasets=[DatasetFacts(name=d, source="nih", images=1000, patients=500, findings=tuple(findings),
                               views="frontal", label_definition="Labels: NLP-mined.",
                               split_method="hash by patient", split_fractions=(0.7, 0.1, 0.2), split_seed=0)
                  for d in datasets],
        recipes=[RecipeFacts(name=r, size=224, resize="stretch", equalize=True) for r in recipes],
        runs=runs,
        evaluation=EvaluationFacts(split="test", n_resamples=(1000,), cluster=("patient",), seed=(7,),
                                   ci=0.95,
                                   threshold=("val",)),
        comparisons=ComparisonFacts(reference=reference, alternative="two-sided", fdr="bh", alpha=0.05),
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    res = synthetic()
    out = tmp_path_factory.mktemp("report")
    paths = write_report(res, out)
    return res, out, paths


def test_results_csv_one_row_per_dataset_init_finding(rendered):
    res, out, paths = rendered
    df = pd.read_csv(paths["csv"])
    assert list(df.columns[:8]) == CONTRACT_COLUMNS and set(RESULT_COLUMNS) <= set(df.columns)
    assert len(df) == 2 * 3 * 4 and not df.duplicated(["dataset", "init", "finding"]).any()
    assert set(df["finding"]) == {"cardiomegaly", "pleural_effusion", "pneumothorax", MEAN}
    mine = res.table.set_index(["dataset", "init", "finding"])
    for r in df.itertuples():
        assert r.auroc == pytest.approx(mine.loc[(r.dataset, r.init, r.finding), "auroc"], abs=1e-5)
        assert r.auroc_lo <= r.auroc <= r.auroc_hi
    ref = df[df["init"] == "imagenet"]
    assert ref["p_vs_reference"].isna().all()
    assert df.loc[df["init"] != "imagenet", "p_adjusted"].notna().all()


def test_mean_rows_are_adjusted_over_the_main_table():
    res = synthetic(seed=3)
    t = res.table
    means = t[(t["finding"] == MEAN) & t["p_vs_reference"].notna()]
    expect = benjamini_hochberg(means["p_vs_reference"].to_numpy(float))
    assert np.allclose(means["p_adjusted"].to_numpy(float), expect)
    assert len(means) == 4  # 2 datasets x 2 non-reference inits in one family
    assert stars(0.0005) == "***" and stars(0.005) == "**" and stars(0.04) == "*" and stars(0.2) == ""
    assert stars(float("nan")) == "" and stars(0.04, alpha=0.01) == ""


def test_html_is_self_contained_with_tables_and_figures(rendered):
    res, out, paths = rendered
    html = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r'(?:src|href)="(?:https?:)?//', html)
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    # forest + (ROC + training) x 2 datasets + external heat map
    assert len(imgs) == 6
    from PIL import Image

    for _, data in imgs:
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        [
            "forest.png",
            "roc-vindr.png",
            "roc-cxr14.png",
            "training-vindr.png",
            "training-cxr14.png",
            "external.png",
        ]
    )
    for needle in (
        "Main table",
        "vindr: AUROC per finding",
        "External validation",
        "Provenance",
        "deadbeef",
        "0123abcd",
        "Methods (generated)",
        "1,000 bootstrap resamples of the test set drawn by patient",
        "ab" * 32,
    ):
        assert needle in html
    best = max(res.table[(res.table["dataset"] == "vindr") & (res.table["finding"] == MEAN)]["auroc"])
    assert re.search(r'<td class="best[^"]*"[^>]*>' + f"{best:.3f}", html)


def test_markdown_report_and_printed_table(rendered):
    res, out, paths = rendered
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md.startswith("# Synthetic study")
    assert "| dataset | test images | findings |" in md and "![" in md and "(figures/forest.png)" in md
    m = res.table[
        (res.table["dataset"] == "cxr14") & (res.table["init"] == "mimic") & (res.table["finding"] == MEAN)
    ]
    assert f"**{m['auroc'].iloc[0]:.3f}" in md  # best of its row, in bold
    text = main_table_text(res)
    assert "vindr" in text and "cxr14" in text and "<" in text and f"{m['auroc'].iloc[0]:.3f}" in text


def test_missing_results_all_pairs_and_recipes(tmp_path):
    res = synthetic(
        reference=None, recipes=("r224", "r512"), external=False, missing=["eval/vindr/r512/mimic/s0"]
    )
    paths = write_report(res, tmp_path)
    html = paths["html"].read_text(encoding="utf-8")
    assert "Incomplete study: 1 result(s) missing" in html and "eval/vindr/r512/mimic/s0" in html
    assert (
        "pairwise differences of the mean AUROC" in html and "forest" not in html.lower().split("<main>")[1]
    )
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"roc-vindr-r224-s0.png", "roc-vindr-r512-s0.png"} <= names
    df = pd.read_csv(paths["csv"])
    assert len(df) == 2 * 2 * 3 * 4 and set(df["recipe"]) == {"r224", "r512"}


# --- headless Chromium -------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--hide-scrollbars",
]


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, user_data_dir: Path) -> None:
        self._to_r, self._to_w = os.pipe()
        self._from_r, self._from_w = os.pipe()
        to_r, from_w = self._to_r, self._from_w

        def child_fds() -> None:
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROME_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=child_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(self._to_r)
        os.close(self._from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def call(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30
    ) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        reply = self._read_until(lambda m: m.get("id") == self._id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for e in self.events:
            if e.get("method") == method:
                return e
        return self._read_until(lambda m: m.get("method") == method, timeout)

    def _read_until(self, match, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if match(m):
                    return m
                self.events.append(m)
            left = end - time.monotonic()
            ready, _, _ = select.select([self._from_r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_w)
        os.close(self._from_r)


def console_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error calls and error log entries (failed loads...)."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(str([a.get("value") for a in p.get("args", [])]))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def render_in_chromium(
    html: Path, screenshot: Path, width: int = 1366, height: int = 900
) -> tuple[dict, list[str]]:
    """Load ``html`` in headless Chromium at a laptop size; return DOM facts and console errors."""
    tmp = screenshot.parent / ".chromium-profile"
    shutil.rmtree(tmp, ignore_errors=True)
    cdp = DevTools(CHROMIUM, tmp)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            cdp.call(domain, session=s)
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        cdp.call("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
        cdp.wait_event("Page.loadEventFired")
        facts = cdp.call(
            "Runtime.evaluate",
            {
                "returnByValue": True,
                "awaitPromise": True,
                "expression": """
            (async () => {
              await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
              const main = document.querySelector('table.main');
              return {
                tables: document.querySelectorAll('table').length,
                captions: [...document.querySelectorAll('caption')].map(c => c.textContent),
                images: document.images.length,
                broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
                resources: performance.getEntriesByType('resource').map(r => r.name),
                mainRight: main ? main.getBoundingClientRect().right : -1,
                overflowing: [...document.querySelectorAll('.tablewrap')]
                  .filter(w => w.scrollWidth > w.clientWidth + 1
                               || w.querySelector('table').getBoundingClientRect().right > window.innerWidth)
                  .map(w => w.querySelector('caption').textContent),
                pageWidth: document.documentElement.scrollWidth,
                viewport: window.innerWidth,
                title: document.title,
              };
            })()""",
            },
            session=s,
        )["result"]["value"]
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session=s)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        try:  # give late console messages a moment
            cdp._read_until(lambda m: False, 0.3)
        except TimeoutError:
            pass
        return facts, console_errors(cdp.events)
    finally:
        cdp.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it",
)
def test_report_renders_in_headless_chromium(rendered):
    res, out, paths = rendered
    shot = ARTIFACTS / "report-synthetic.png"
    facts, errors = render_in_chromium(paths["html"], shot)
    assert errors == []
    assert facts["title"] == "Synthetic study"
    # main + 2 per-finding + 3 external + datasets + 2 prevalence + provenance
    assert facts["tables"] == 10
    assert any(c.startswith("Main table") for c in facts["captions"])
    assert facts["images"] == 6 and facts["broken"] == 0
    assert facts["resources"] == []  # nothing fetched: the page is self-contained
    assert 0 < facts["mainRight"] <= facts["viewport"]  # the main table fits a laptop screen
    from PIL import Image

    assert Image.open(shot).size == (1366, 900)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_chromium_check_catches_errors(tmp_path):
    """The render check is not vacuous: a page with a script error and a broken image fails it."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><table class="main"><tr><td>1</td></tr></table>'
        '<img src="data:image/png;base64,AAAA"><script>console.error("boom"); nope();</script>'
        "</body></html>"
    )
    facts, errors = render_in_chromium(page, tmp_path / "bad.png")
    assert len(errors) >= 2 and facts["broken"] == 1


def test_index_warnings_are_shown_in_the_report(tmp_path):
    """A study that built its indexes shows their warnings (thin splits, missing images) in the report,
    not only in index.report.json."""
    from dataclasses import replace

    res = synthetic()
    first = replace(res.protocol.datasets[0], warnings=("finding 'edema': test 2 positive / 40 negative "
                                                        "(fewer than 10: its AUROC there is unreliable)",))
    res = replace(res, protocol=replace(res.protocol, datasets=[first, *res.protocol.datasets[1:]]))
    paths = write_report(res, tmp_path)
    html = paths["html"].read_text()
    assert "Index warnings." in html and "test 2 positive / 40 negative" in html
    assert "Index warnings." in paths["markdown"].read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_every_table_fits_a_1280_px_window(rendered, tmp_path):
    """No table needs a horizontal scroll bar or runs past the window at 1280 px (the per-finding
    tables did, at 1176 px in a 1006-px column); the page itself does not scroll sideways."""
    res, out, paths = rendered
    facts, errors = render_in_chromium(paths["html"], tmp_path / "shot.png", width=1280)
    assert errors == [] and facts["tables"] == 10
    assert facts["overflowing"] == [], facts["overflowing"]
    assert facts["pageWidth"] <= 1280
