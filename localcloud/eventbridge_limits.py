"""Make moto refuse what EventBridge refuses in PutEvents, as localcloud.dynamodb_limits does for DynamoDB.

moto 5 checks that a call has at most 10 entries and that each has a Source, a DetailType and a Detail
that parses as JSON. AWS also refuses, and moto did not:
- a call whose entries total more than 256 KB (262,144 bytes), each entry counted as AWS documents
  ("Calculating PutEvents event entry size"): 14 bytes for Time when given, then Source, DetailType,
  Detail and each of Resources in UTF-8 (EventBusName and TraceHeader are not counted). The whole call
  is a ValidationException and nothing is put;
- a call with no entries (ValidationException);
- an entry whose Detail is JSON but not an object (`[1]`, `"text"`, `3`): that entry fails with
  MalformedDetail, as an unparsable one does, and the others are put (moto warned and delivered it).
Installed by the tests' moto fixture (tests/conftest.py) and by the local cloud
(localcloud.aws._install_patches). The size is checked on the request, before the local cloud stamps
an entry sent without Time with its clock (localcloud.eventbridge), which would count 14 bytes more.
"""
from __future__ import annotations

import json
from typing import Any

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
TOO_LARGE = "Total size of the entries in the request is over the limit."
_installed = False


def entry_size(entry: dict[str, Any]) -> int:
    """A PutEventsRequestEntry's size as EventBridge counts it."""
    size = 14 if entry.get("Time") is not None else 0
    for name in ("Source", "DetailType", "Detail"):
        if entry.get(name) is not None:
            size += len(str(entry[name]).encode("utf-8", "surrogatepass"))
    return size + sum(len(str(r).encode("utf-8", "surrogatepass")) for r in entry.get("Resources") or () if r)


def request_problem(entries: list[dict[str, Any]]) -> str | None:
    """AWS's message for a call it refuses whole, or None."""
    if not entries:
        return ("1 validation error detected: Value '[]' at 'entries' failed to satisfy constraint: "
                "Member must have length greater than or equal to 1")
    if len(entries) > MAX_ENTRIES:
        return ("1 validation error detected: Value '[PutEventsRequestEntry]' at 'entries' failed to satisfy "
                f"constraint: Member must have length less than or equal to {MAX_ENTRIES}")
    if sum(entry_size(e) for e in entries) > MAX_REQUEST_BYTES:
        return TOO_LARGE
    return None


def _not_an_object(detail: Any) -> bool:
    """A Detail that parses as JSON but is not an object (an unparsable one is moto's MalformedDetail)."""
    if not isinstance(detail, str):
        return False
    try:
        return not isinstance(json.loads(detail), dict)
    except ValueError:
        return False


def install() -> None:
    """Patch moto once per process (its backends are process-global)."""
    global _installed
    if _installed:
        return
    from moto.events.exceptions import ValidationException
    from moto.events.models import EventsBackend
    from moto.events.responses import EventsHandler

    original_request = EventsHandler.put_events
    original_put = EventsBackend.put_events

    def put_events_request(self):
        problem = request_problem(self._get_param("Entries") or [])
        if problem:
            raise ValidationException(problem)
        return original_request(self)

    def put_events(self, events):
        malformed = {i for i, event in enumerate(events) if _not_an_object(event.get("Detail"))}
        if not malformed:
            return original_put(self, events)
        put = iter(original_put(self, [e for i, e in enumerate(events) if i not in malformed]))
        return [{"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."} if i in malformed
                else next(put) for i in range(len(events))]

    EventsHandler.put_events = put_events_request
    EventsBackend.put_events = put_events
    _installed = True
