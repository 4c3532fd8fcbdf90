"""The overall ETA: measured step times kept in the run folder, never a guess."""

from __future__ import annotations

import json

from edgeslim.progress import TIMINGS_FILE, RunClock, format_seconds


def test_a_first_run_says_it_has_no_eta(tmp_path):
    clock = RunClock(tmp_path, ["00-teacher", "01-distill", "report"])
    assert clock.eta("00-teacher").startswith("no ETA yet")


def test_the_eta_adds_the_last_times_of_the_steps_still_to_come(tmp_path):
    clock = RunClock(tmp_path, ["00-teacher", "01-distill", "02-export", "report"])
    clock.finished("00-teacher", 30)
    clock.finished("01-distill", 125)
    clock.finished("report", 20)
    again = RunClock(tmp_path, clock.steps)  # the next run reads what this one measured
    assert again.eta("01-distill") == "ETA 2 min 25 s for the rest of the run (last times here; not timed yet: 02-export)"
    assert again.eta("report") == "ETA 20 s for the rest of the run (last times here)"
    assert json.loads((tmp_path / TIMINGS_FILE).read_text())["01-distill"] == 125


def test_a_broken_timings_file_is_ignored(tmp_path):
    (tmp_path / TIMINGS_FILE).write_text("{not json")
    assert RunClock(tmp_path, ["a"]).eta("a").startswith("no ETA yet")


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
