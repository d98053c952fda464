"""IANA time zone names, as people and EventBridge Scheduler mean them.

`ZoneInfo` loads more than IANA zone names: `localtime` (the machine's own zone, whatever the host says),
`posixrules`, `Factory`, and the `posix/...` and `right/...` copies of the database (the `right/` ones
count leap seconds, so their clocks differ from everyone's by 27 s). Accepted as a space's or a
broadcast's default zone, a destination's schedule zone or a profile's `timezone` trait, they gave times
that depend on the host, or schedules EventBridge Scheduler refuses. Every zone check goes through `zone`.

A definition stored before this rule (a space's settings, a broadcast, a destination's schedule) is read
with `strict=False`, as before: new rules apply when something is saved, so what is stored stays readable.
"""
from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NOT_ZONE_NAMES = frozenset({"localtime", "posixrules", "Factory"})
NOT_ZONE_PREFIXES = ("posix/", "right/")
MAX_NAME = 64


def zone(name: object, *, strict: bool = True) -> ZoneInfo | None:
    """The zone `name` names, or None when it is not an IANA time zone name (`strict=False`: any name
    ZoneInfo loads, the rule before this module)."""
    if not isinstance(name, str) or not name:
        return None
    if strict and (len(name) > MAX_NAME or name in NOT_ZONE_NAMES or name.startswith(NOT_ZONE_PREFIXES)):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def is_zone(name: object, *, strict: bool = True) -> bool:
    return zone(name, strict=strict) is not None


def saving(info: object) -> bool:
    """In a pydantic validator: whether the model is validated for a save (`context={"saving": True}`)."""
    context = getattr(info, "context", None)
    return bool(context and context.get("saving"))
