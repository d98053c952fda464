"""`python -m bench [--full] [--only NAME] [--update-baseline]`: run every scenario, write BENCHMARKS.md.

Each module in bench/scenarios/ has `run(context) -> list[Figure]`; they run in name order
in this one process, so the file always holds figures from one run.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench import report, scenarios


@dataclass
class Context:
    full: bool
    notes: list[str] = field(default_factory=list)
    extra: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, markdown lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--full", action="store_true", help="add the 1M-scale cases")
    parser.add_argument("--only", action="append", help="run only these scenario modules")
    parser.add_argument("--update-baseline", action="store_true",
                        help="accept this run's counted figures as the new baseline")
    args = parser.parse_args(argv)
    context = Context(full=args.full)
    figures: list[report.Figure] = []
    failed = []
    names = sorted(m.name for m in pkgutil.iter_modules(scenarios.__path__))
    for name in names:
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        try:
            module = importlib.import_module(f"bench.scenarios.{name}")
            produced = module.run(context)
        except Exception:  # noqa: BLE001 - a broken scenario must not hide the others
            traceback.print_exc()
            failed.append(name)
            continue
        figures.extend(produced)
        print(f"bench: {name} done in {time.perf_counter() - started:.1f}s ({len(produced)} figures)", flush=True)
    header = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **report.machine()}
    if failed:
        context.notes.append(f"scenarios that failed in this run: {', '.join(failed)}")
    report.write_document(figures, header, context.notes, args.full, context.extra)
    worse = report.guard(figures)
    if args.update_baseline:
        report.save_baseline(figures)
        print("bench: baseline updated")
        worse = []
    for line in worse:
        print(f"bench: REGRESSION {line}", file=sys.stderr)
    print(f"bench: wrote {report.DOCUMENT.name} ({len(figures)} figures)")
    return 1 if (worse or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
