"""common.progress: a bar on a terminal, plain periodic lines in a log, nothing when quiet."""

from __future__ import annotations

import io
import re

from cxrbench.common.progress import LineProgress, make_progress


def test_plain_lines_say_done_total_rate_and_eta():
    out = io.StringIO()
    with LineProgress("images", every=0.0, stream=out) as p:
        task = p.add_task("prepare", total=200, completed=50)
        p.advance(task, 50)
        p.advance(task, 100)
    lines = out.getvalue().splitlines()
    pattern = r"prepare: 100/200 images \(50%\), [\d,.]+ images/s, elapsed 0:00:00, ETA \d:\d\d:\d\d"
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert lines[-1].startswith("prepare: 200/200 images (100%)") and "ETA" not in lines[-1]
    assert len(lines) == 2  # the final state is not printed twice


def test_lines_are_periodic_not_per_item():
    out = io.StringIO()
    with LineProgress("images", every=3600.0, stream=out) as p:
        task = p.add_task("prepare", total=1000)
        for _ in range(1000):
            p.advance(task)
    assert out.getvalue().count("\n") == 1  # only the last line within the hour


def test_off_a_terminal_lines_only_when_asked_and_never_when_quiet(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(make_progress(False, lines=True), LineProgress)
    assert not isinstance(make_progress(True, lines=True), LineProgress)  # --quiet
    assert not isinstance(make_progress(False), LineProgress)  # a disabled bar, as before
