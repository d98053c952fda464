"""The regression guard fails only counted figures that got worse; timings never fail the run."""
import json

from bench import report
from bench.report import Figure


def test_guard_flags_a_counted_figure_that_got_worse_and_ignores_timings(tmp_path, monkeypatch):
    # Given a baseline of one cost (lower is better) and one throughput (higher is better)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"Cost / requests": 3, "Speed / evals": 100, "Time / ms": 1}))
    monkeypatch.setattr(report, "BASELINE", baseline)
    # When the cost rises, the throughput falls and a timing doubles
    figures = [Figure("Cost", "requests", 4, "requests", "m", counted=True),
               Figure("Speed", "evals", 90, "eval", "m", counted=True, higher_is_better=True),
               Figure("Time", "ms", 2, "ms", "m")]
    # Then the two counted figures are reported, the timing is not
    assert report.guard(figures) == ["Cost / requests: 4 > baseline 3", "Speed / evals: 90 < baseline 100"]


def test_guard_accepts_equal_or_better_counts(tmp_path, monkeypatch):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"Cost / requests": 3}))
    monkeypatch.setattr(report, "BASELINE", baseline)
    assert report.guard([Figure("Cost", "requests", 2, "requests", "m", counted=True)]) == []


def test_a_timed_ratio_is_guarded_with_its_tolerance_and_the_baseline_holds_its_target(tmp_path, monkeypatch):
    # Given a cold-start ratio (handler process / `import boto3` process) whose target is 1.5x, 15% slack
    baseline = tmp_path / "baseline.json"
    monkeypatch.setattr(report, "BASELINE", baseline)

    def ratio(value):
        return Figure("Cold start", "f", value, "x", "m", counted=True, tolerance=0.15, floor=1.5)

    # When a run meets the target, the baseline keeps the target, not the run's jittering value
    report.save_baseline([ratio(1.2)])
    assert json.loads(baseline.read_text()) == {"Cold start / f": 1.5}
    # Then a run within the slack passes and one beyond it fails
    assert report.guard([ratio(1.7)]) == []
    assert report.guard([ratio(1.8)]) == ["Cold start / f: 1.8 > baseline 1.5 + 15%"]
    # And a ratio still above its target is held where it is (it may not get worse)
    report.save_baseline([ratio(2.1)])
    assert json.loads(baseline.read_text()) == {"Cold start / f": 2.1}
