"""Audience evaluation throughput on one core: the pure evaluator against DuckDB on the same data.

Data: `profiles` users, each with traits (plan, country, logins, email) and the daily counts
the profile processor keeps (`daily_counts`: event -> {YYYYMMDD: n}) for 4 event names over
the last 60 days. The evaluator runs over ProfileViews built beforehand (the runtime builds
one per profile change and evaluates every affected audience on it); DuckDB holds the same
data as two tables (profiles; profile x event x day counts) and answers the same condition
for every profile in one query, threads=1. Both sides: best of 3 timed passes, the member
counts must agree.
"""
from __future__ import annotations

import csv
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

from bench.report import Figure

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
EVENTS = ["Order Completed", "Product Viewed", "Signed In", "Cart Viewed"]
TYPICAL = {"key": "pro_buyers", "name": "Pro buyers", "condition": {"all": [
    {"trait": "plan", "op": "eq", "value": "pro"},
    {"event": "Order Completed", "count": {"op": "gte", "value": 3}, "window": {"within_days": 30}}]}}
COUNT_ONLY = {"key": "buyers", "name": "Buyers", "condition": {
    "event": "Order Completed", "count": {"op": "gte", "value": 3}, "window": {"within_days": 30}}}
PLANS = ["free", "starter", "pro", "enterprise"]


def _day_key(day: datetime) -> str:
    return day.strftime("%Y%m%d")


def profiles(n: int, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        counts = {}
        for event in EVENTS:
            days = rng.sample(range(60), rng.randint(0, 10))
            if days:
                counts[event] = {_day_key(NOW - timedelta(days=d)): rng.randint(1, 3) for d in days}
        out.append({"profile_id": f"p{i}", "traits": {"plan": rng.choice(PLANS), "country": "US",
                                                      "logins": rng.randint(0, 40), "email": f"u{i}@example.com"},
                    "daily_counts": counts,
                    "event_stats": {e: {"total": sum(c.values())} for e, c in counts.items()}})
    return out


def _ours(definition, views, passes: int) -> tuple[float, int]:
    from engage.audiences import evaluate

    best, members = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(passes):
            members = sum(1 for view in views if evaluate(definition, view, NOW))
        best = min(best, time.perf_counter() - started)
    return len(views) * passes / best, members


def _duckdb(items: list[dict], with_trait: bool, passes: int) -> tuple[float, int]:
    import duckdb

    db = duckdb.connect()
    db.execute("SET threads = 1")
    db.execute("CREATE TABLE profiles (profile_id VARCHAR, plan VARCHAR)")
    db.execute("CREATE TABLE counts (profile_id VARCHAR, event VARCHAR, day DATE, n INTEGER)")
    # Loaded through CSV files: executemany inserts row by row and would take minutes.
    with tempfile.TemporaryDirectory() as folder:
        with open(f"{folder}/p.csv", "w", newline="") as handle:
            csv.writer(handle).writerows((p["profile_id"], p["traits"]["plan"]) for p in items)
        with open(f"{folder}/c.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(
                (p["profile_id"], event, f"{day[:4]}-{day[4:6]}-{day[6:]}", n)
                for p in items for event, buckets in p["daily_counts"].items() for day, n in buckets.items())
        db.execute(f"INSERT INTO profiles SELECT * FROM read_csv('{folder}/p.csv', header=false)")
        db.execute(f"INSERT INTO counts SELECT * FROM read_csv('{folder}/c.csv', header=false)")
    first = (NOW - timedelta(days=29)).date()
    trait = "p.plan = 'pro' AND " if with_trait else ""
    query = f"""
        SELECT count(*) FILTER (WHERE {trait}coalesce(s.total, 0) >= 3) AS members, count(*) AS evaluated
        FROM profiles p LEFT JOIN (
            SELECT profile_id, sum(n) AS total FROM counts
            WHERE event = 'Order Completed' AND day BETWEEN ? AND ? GROUP BY profile_id) s
        USING (profile_id)"""
    best, members = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(passes):
            members, evaluated = db.execute(query, [first, NOW.date()]).fetchone()
        best = min(best, time.perf_counter() - started)
    db.close()
    return evaluated * passes / best, members


def run(context) -> list[Figure]:
    from engage.audiences import ProfileView, parse_definition

    count, passes = (200_000, 5) if context.full else (50_000, 2)
    items = profiles(count)
    views = [ProfileView.from_item(p) for p in items]
    figures = []
    for label, spec, with_trait in (("trait + windowed event count", TYPICAL, True),
                                    ("windowed event count alone", COUNT_ONLY, False)):
        definition = parse_definition(spec)
        ours, our_members = _ours(definition, views, passes)
        floor, their_members = _duckdb(items, with_trait, passes)
        if our_members != their_members:
            raise AssertionError(f"{label}: evaluator found {our_members} members, DuckDB {their_members}")
        figures.append(Figure(
            "Audience evaluation (one core)", f"{label}: profile-audience evaluations per second", ours, "eval/s",
            f"engage.audiences.evaluate over {count:,} prebuilt ProfileViews x {passes} passes, best of 3; "
            f"{our_members:,} members (= DuckDB's); target >= 50,000/s",
            higher_is_better=True, floor=floor,
            floor_method="DuckDB threads=1, one GROUP BY + join query over the same profiles and daily counts"))
    return figures
