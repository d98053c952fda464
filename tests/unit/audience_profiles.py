"""A profile fed event by event the way the profile processor does it (engage.profiles'
daily_counts/event_stats plus the audience engine's apply_event), for the audience tests."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from engage import clock, profiles
from engage.audiences import (
    AudienceDefinition,
    AudienceIndex,
    ProfileView,
    apply_event,
    evaluate,
    evaluate_from_scratch,
    parse_definition,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def at(days: float = 0, hours: float = 0, minutes: float = 0, base: datetime = T0) -> datetime:
    """A moment relative to T0 (negative = in the past)."""
    return base + timedelta(days=days, hours=hours, minutes=minutes)


def track(event: str, when: datetime, properties: dict | None = None, *, message_id: str | None = None) -> dict:
    return {"type": "track", "event": event, "timestamp": clock.iso(when), "properties": properties or {},
            "messageId": message_id or f"m{next(_ids):06d}", "userId": "u1"}


def page(when: datetime, properties: dict | None = None) -> dict:
    return {"type": "page", "name": "Offer", "timestamp": clock.iso(when), "properties": properties or {},
            "messageId": f"m{next(_ids):06d}", "userId": "u1"}


def audience(condition: dict, key: str = "test_audience", entity: str = "users") -> AudienceDefinition:
    return parse_definition({"key": key, "name": key.replace("_", " "), "entity": entity, "condition": condition})


class Profile:
    """Incremental profile: daily_counts/event_stats from engage.profiles.record_event, and
    condition_state from apply_event, exactly as the processor maintains them."""

    def __init__(self, definitions: list[AudienceDefinition], traits: dict | None = None, **extra):
        self.index = AudienceIndex(definitions)
        self.aggregates = SimpleNamespace(daily_counts={}, event_stats={})
        self.condition_state: dict = {}
        self.events: list[dict] = []
        self.traits = dict(traits or {})
        self.extra = extra

    def send(self, *messages: dict) -> Profile:
        for message in messages:
            self.events.append(message)
            name = message["event"] if message["type"] == "track" else {
                "page": "Page Viewed", "screen": "Screen Viewed"}.get(message["type"])
            if name:
                # retention counted from the event itself: tests choose `now` at or after it
                profiles.record_event(self.aggregates, name, message["timestamp"],
                                      now=clock.parse(message["timestamp"]), retention_days=3650)
            self.condition_state = apply_event(self.condition_state, message, self.index)
        return self

    def view(self) -> ProfileView:
        return ProfileView(traits=self.traits, computed_traits=self.extra.get("computed_traits", {}),
                           daily_counts=self.aggregates.daily_counts, event_stats=self.aggregates.event_stats,
                           subscriptions=self.extra.get("subscriptions", {}), condition_state=self.condition_state)


def both(definition, profile: Profile, now, memberships=None) -> bool:
    """The incremental answer, checked against the reference evaluator on the same history."""
    incremental = evaluate(definition, profile.view(), now, memberships or {})
    reference = evaluate_from_scratch(definition, profile.events, profile.traits, now, memberships or {},
                                      computed_traits=profile.extra.get("computed_traits"),
                                      subscriptions=profile.extra.get("subscriptions"))
    assert incremental == reference, "incremental and reference evaluators disagree"
    return incremental
