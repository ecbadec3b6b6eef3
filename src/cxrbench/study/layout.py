"""Every path of a study folder, in one place.

::

    OUT/study.yaml                              the validated config as run (with its hash)
    OUT/data/<dataset>/                         a phantom dataset (when the config has no root)
    OUT/index/<dataset>/index.parquet           the index (+ index.report.json)
    OUT/cache/<dataset>/<recipe>/               the cache (Contract 3)
    OUT/pretrain/<init>/<recipe>/<findings>/s<seed>/   a domain pretraining run (Contract 4)
    OUT/tuning/<dataset>/<recipe>/<init>/r<rung>/t<k>/   a tuning trial (trial.json, run/); chosen/tuning.json
    OUT/runs/<dataset>/<recipe>/<init>/s<seed>/ a fine-tuning run (Contract 4), eval/ inside
    OUT/external/<A>-on-<B>/<recipe>/<init>/s<seed>/   a run of A scored on B
    OUT/compare/<dataset>/<recipe>/s<seed>/     comparison.json + comparison.csv
    OUT/localization/<dataset>/<recipe>/<init>/s<seed>/   saliency scored against the regions
    OUT/report/                                 index.html, report.md, results.csv, figures/
    OUT/.steps/<step id>.json                   step markers (running, done, failed)
    OUT/.stale/, OUT/.locks/, OUT/.cache/       set-aside outputs, step locks, the weight-hash cache
    OUT/.jobs/<step id>.json                    the job of a step (SLURM / submitit executors): id, logs
    OUT/.jobs/logs/<job id>/                    submitit's job folders: scripts, pickles, stdout, stderr
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrbench.common.layout import INDEX_FILE, REPORT_HTML, STUDY_COPY

STEPS_DIR = ".steps"
STALE_DIR = ".stale"
LOCKS_DIR = ".locks"
JOBS_DIR = ".jobs"
JOB_LOGS = "logs"
REPLAN_JOB = "_replan"  # the record of the job that submits the steps known only after indexing


@dataclass(frozen=True)
class StudyLayout:
    """The paths of the study folder ``out`` (nothing is created here)."""

    out: Path

    @property
    def study_copy(self) -> Path:
        return self.out / STUDY_COPY

    def phantom_root(self, dataset: str) -> Path:
        return self.out / "data" / dataset

    def index_file(self, dataset: str) -> Path:
        return self.out / "index" / dataset / INDEX_FILE

    def index_dir(self, dataset: str) -> Path:
        return self.out / "index" / dataset

    def cache_dir(self, dataset: str, recipe: str) -> Path:
        return self.out / "cache" / dataset / recipe

    def pretrain_dir(self, label: str, recipe: str, findings_key: str, seed: int) -> Path:
        return self.out / "pretrain" / label / recipe / findings_key / f"s{seed}"

    def ssl_dir(self, label: str, recipe: str, seed: int | None = None) -> Path:
        """``ssl/<label>/<recipe>``: the self-supervised pretraining run of an ``ssl:`` arm (shared by its
        seeds); ``ssl/<label>/s<seed>/<recipe>`` with one run per seed (``pretrain_seeds: per-seed``)."""
        return self.out / "ssl" / label / (recipe if seed is None else f"s{seed}/{recipe}")

    def tuning_dir(self, dataset: str, recipe: str, label: str, condition: str = "") -> Path:
        """``tuning/<dataset>/<recipe>/<label>/[<adaptation>/]``: the trials ``r<rung>/t<k>/`` of an arm's
        tuning and its choice ``chosen/tuning.json``."""
        return self.out / "tuning" / dataset / recipe / label / condition

    def run_dir(self, dataset: str, recipe: str, label: str, seed: int, condition: str = "") -> Path:
        """``runs/<dataset>/<recipe>/<label>/[<condition>/]s<seed>`` (``condition``: the non-default
        axis segments, e.g. ``f0.25/``, see :mod:`cxrbench.study.axes`)."""
        return self.out / "runs" / dataset / recipe / label / f"{condition}s{seed}"

    def external_dir(self, train: str, test: str, recipe: str, label: str, seed: int,
                     condition: str = "") -> Path:
        return self.out / "external" / f"{train}-on-{test}" / recipe / label / f"{condition}s{seed}"

    def compare_dir(self, dataset: str, recipe: str, seed: int, condition: str = "") -> Path:
        return self.out / "compare" / dataset / recipe / f"{condition}s{seed}"

    def localization_dir(self, dataset: str, recipe: str, label: str, seed: int, condition: str = "") -> Path:
        """``localization/<dataset>/<recipe>/<label>/[<condition>/]s<seed>``: a run's saliency maps scored
        against the regions of its evaluation split (``localization.json`` + ``.parquet``)."""
        return self.out / "localization" / dataset / recipe / label / f"{condition}s{seed}"

    def shortcut_dir(self, dataset: str, recipe: str) -> Path:
        """``shortcut/<dataset>/<recipe>``: the metadata-only baseline (``cxrbench shortcut``)."""
        return self.out / "shortcut" / dataset / recipe

    def pooled_dir(self, dataset: str, recipe: str, condition: str = "") -> Path:
        """``pooled/<dataset>/<recipe>/[<condition>/]seeds``: every arm pooled over its seeds (a leaf
        folder, so setting one condition's results aside never moves another's)."""
        return self.out / "pooled" / dataset / recipe / f"{condition}seeds"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    @property
    def report_html(self) -> Path:
        """The report's entry page."""
        return self.report_dir / REPORT_HTML

    def marker(self, step_id: str) -> Path:
        """``OUT/.steps/<id>.json`` (the id's slashes become folders)."""
        return self.out / STEPS_DIR / f"{step_id}.json"

    def lock(self, step_id: str) -> Path:
        return self.out / LOCKS_DIR / f"{step_id.replace('/', '__')}.lock"

    def stale_dir(self, step_id: str, stamp: str) -> Path:
        return self.out / STALE_DIR / f"{step_id.replace('/', '__')}-{stamp}"

    def job_record(self, step_id: str) -> Path:
        """``OUT/.jobs/<id>.json``: the job that runs a step (the id's slashes become folders)."""
        return self.out / JOBS_DIR / f"{step_id}.json"

    @property
    def jobs_dir(self) -> Path:
        return self.out / JOBS_DIR

    @property
    def job_logs(self) -> Path:
        """submitit's folder; ``%j`` is replaced by each job's id."""
        return self.out / JOBS_DIR / JOB_LOGS / "%j"

    @property
    def weight_hashes(self) -> Path:
        return self.out / ".cache" / "hashes.json"
