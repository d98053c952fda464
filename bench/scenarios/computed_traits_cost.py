"""Extra AWS requests and write units per event that computed traits cost (issue 15's target: none
beyond the profile write the event already costs).

The same seeded traffic (bench.workload, 40 profiles, 200 measured messages; 200 and 1,000 with FULL)
runs twice through the real handlers on a fresh moto account each (bench.scenarios.pipeline_cost's
drive: ingest, then the streams in batches of 100): once with no computed trait, once with 20
defined over the traffic's events. Both runs define no audience, so the difference is the computed
traits' own cost. The traits are created ready before the warm-up traffic (a backfill would have
nothing to read); only the measured (steady) phase is counted.
"""
from __future__ import annotations

from datetime import timedelta

from bench.report import Figure
from bench.scenarios.pipeline_cost import ANCHOR, STAGES, _drive

TRAITS = 20
KINDS = [("count", None), ("sum", "price"), ("max", "price"), ("last", "product_id"), ("unique_list", "product_id")]


def computed_traits(n: int) -> list[dict]:
    """n definitions spread over the workload's track events and a few kinds (count/sum/max/last/unique)."""
    from bench import workload

    events = sorted(workload.TRACK_EVENTS)
    out = []
    for i in range(n):
        kind, prop = KINDS[i % len(KINDS)]
        spec = {"key": f"ct_{i:02d}", "kind": kind, "event": events[i % len(events)]}
        if prop:
            spec["property"] = prop
        out.append(spec)
    return out


def _measure(profiles: int, events: int, traits: list[dict]):
    from bench import workload
    from bench.harness import Lambdas, StreamTap, moto_account
    from engage.computed_traits import store
    from engage.computed_traits.management import validate

    with moto_account(now=ANCHOR) as made:
        for spec in traits:  # validated as the API does; ready at once (nothing to backfill yet)
            store.create("acme", validate(spec).to_dict(), status=store.READY)
        lambdas = Lambdas()
        taps = [("profile_processor", StreamTap(made["tables"]["EventsTable"])),
                ("audience_evaluator", StreamTap(made["tables"]["ProfilesTable"])),
                ("audience_router", StreamTap(made["tables"]["MembershipsTable"]))]
        traffic = workload.Traffic(profiles)
        _drive(lambdas, taps, traffic.warm_up(ANCHOR - timedelta(days=20), ANCHOR - timedelta(days=10)), workload)
        lambdas.reset()
        _drive(lambdas, taps, traffic.steady(events, ANCHOR - timedelta(days=10), ANCHOR), workload)
        return lambdas.total(STAGES)


def run(context) -> list[Figure]:
    from bench import workload

    profiles, events = (200, 1000) if context.full else (40, 200)
    without = _measure(profiles, events, [])
    with_traits = _measure(profiles, events, computed_traits(TRAITS))
    track = sum(1 for m in workload.Traffic(profiles).steady(events, ANCHOR - timedelta(days=10), ANCHOR)
                if m["type"] == "track")
    section = f"Computed traits ({TRAITS} defined, {profiles} profiles, steady traffic)"
    basis = (f"{events} messages one request each, streams in batches of 100; the same traffic with 0 and with "
             f"{TRAITS} computed traits defined, no audience; difference / messages")
    figures = []
    for label, pick in (("DynamoDB requests", lambda t: t.usage.count("dynamodb")),
                        ("write units", lambda t: t.usage.write_units),
                        ("read units", lambda t: t.usage.read_units),
                        ("invocations", lambda t: t.invocations),
                        ("EventBridge events", lambda t: t.usage.bus_events)):
        figures.append(Figure(section, f"extra {label} per event", (pick(with_traits) - pick(without)) / events,
                              label, f"{basis}; target 0 beyond the profile write", counted=True))
    figures += [
        Figure(section, "DynamoDB requests per event with none defined", without.usage.count("dynamodb") / events,
               "requests", basis, counted=True),
        Figure(section, "write units per event with none defined", without.usage.write_units / events, "WRU",
               basis, counted=True),
        Figure(section, "track calls among the measured messages", track, "messages",
               "the events a computed trait can read (identify and page calls cannot)"),
    ]
    return figures
