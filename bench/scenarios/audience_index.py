"""Audiences evaluated per event against audiences defined (the index must keep it flat).

10 / 100 / 1,000 audiences (10,000 with FULL), each reading its own event (`Event NNNN`)
and the `plan` trait; a profile image gets one more `Event 0000` in today's bucket. The
figure is what the runtime evaluates: engage.audiences.runtime.diff of the old and new
image, then the space index's `affected` (pure, counted).
"""
from __future__ import annotations

from bench.report import Figure


def run(context) -> list[Figure]:
    from bench import workload
    from engage.audiences import AudienceIndex, parse_definition, runtime

    old = {"profile_id": "p1", "space_id": "acme", "traits": {"plan": "pro"},
           "daily_counts": {"Event 0000": {"20300101": 1}, "Event 0001": {"20300101": 4}}}
    new = {**old, "daily_counts": {**old["daily_counts"], "Event 0000": {"20300101": 2}}}
    figures = []
    for total in (10, 100, 1000) + ((10_000,) if context.full else ()):
        index = AudienceIndex([parse_definition(d) for d in workload.one_event_audiences(total)])
        changed = runtime.diff(old, new)
        affected = index.affected(changed.events, changed.traits, (), changed.computed_traits,
                                  changed_subscriptions=changed.subscriptions, entity="users")
        figures.append(Figure("Audiences evaluated per event", f"{total:,} audiences defined", len(affected),
                              "audiences evaluated",
                              "runtime.diff + AudienceIndex.affected for one event that one audience reads; "
                              "target: independent of the total", counted=True))
    return figures
