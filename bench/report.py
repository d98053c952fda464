"""Figures, the BENCHMARKS.md writer and the regression guard."""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "bench" / "baseline.json"
RESULTS = ROOT / "bench" / "results.json"
DOCUMENT = ROOT / "BENCHMARKS.md"


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    method: str
    # counted figures (requests, capacity units, evaluations per event) are guarded against
    # the baseline; timed figures only warn (machines differ, counts do not).
    counted: bool = False
    # lower is better for costs and times; higher for throughput
    higher_is_better: bool = False
    floor: float | None = None
    floor_method: str = ""
    # A counted figure measured by timing against a yardstick in the same run (a ratio, e.g. cold
    # start / `import boto3`) jitters: the guard allows this relative slack, and the baseline keeps
    # the floor (the target) rather than the run's value once the target is met.
    tolerance: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.section} / {self.name}"

    def ratio(self) -> float | None:
        if not self.floor:
            return None
        return self.value / self.floor


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, check=False,
                           text=True).stdout.strip()
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"commit": commit + ("+changes" if dirty else ""), "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}"}


def write_document(figures: list[Figure], header: dict, notes: list[str], full: bool,
                   extra: list[tuple[str, list[str]]] = ()) -> None:
    lines = ["# Benchmarks", "",
             "Written by `make bench` from one run (`make bench FULL=1` adds the large-scale cases).",
             "Counted figures (requests, capacity units, evaluations) are exact and guarded: `make bench`",
             "fails when one gets worse than `bench/baseline.json`. Timed figures depend on the machine",
             "and only warn. moto's own time is never counted as ours: AWS calls are counted, not timed,",
             "and own time = wall time minus time inside AWS SDK calls (see bench/meter.py).", "",
             f"- date: {header['date']}", f"- commit: {header['commit']}", f"- machine: {header['machine']}",
             f"- python: {header['python']}", f"- mode: {'full' if full else 'quick'}", ""]
    sections: dict[str, list[Figure]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure)
    for section, items in sections.items():
        lines += [f"## {section}", "", "| figure | value | unit | floor | ratio to floor | method |",
                  "| --- | ---: | --- | ---: | ---: | --- |"]
        for figure in items:
            ratio = figure.ratio()
            floor_text = _fmt(figure.floor) if figure.floor is not None else ""
            if figure.floor_method:
                floor_text += f" ({figure.floor_method})"
            lines.append(f"| {figure.name} | {_fmt(figure.value)} | {figure.unit} | {floor_text} | "
                         f"{'' if ratio is None else f'{ratio:.2f}x'} | {figure.method} |")
        lines.append("")
    for title, block in extra:
        lines += [f"## {title}", "", *block, ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    DOCUMENT.write_text("\n".join(lines))
    RESULTS.write_text(json.dumps({"header": header, "figures": [asdict(f) for f in figures]}, indent=2))


def guard(figures: list[Figure], tolerance: float = 1e-9) -> list[str]:
    """Counted figures that got worse than the committed baseline."""
    if not BASELINE.exists():
        return []
    baseline = json.loads(BASELINE.read_text())
    worse = []
    for figure in figures:
        if not figure.counted or figure.key not in baseline:
            continue
        before = baseline[figure.key]
        slack = abs(before) * figure.tolerance + tolerance
        if figure.higher_is_better and figure.value < before - slack:
            worse.append(f"{figure.key}: {figure.value} < baseline {before}")
        if not figure.higher_is_better and figure.value > before + slack:
            worse.append(f"{figure.key}: {figure.value} > baseline {before}"
                         + (f" + {figure.tolerance:.0%}" if figure.tolerance else ""))
    return worse


def _baseline_value(figure: Figure) -> float:
    if figure.tolerance and figure.floor is not None and not figure.higher_is_better:
        return max(figure.value, figure.floor)  # a timed ratio: hold the target, or what we have if above it
    return figure.value


def save_baseline(figures: list[Figure]) -> None:
    BASELINE.write_text(json.dumps({f.key: _baseline_value(f) for f in figures if f.counted}, indent=2,
                                   sort_keys=True) + "\n")
