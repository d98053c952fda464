"""Parked stream failures: every record a stream function gave up on, kept with its payload and replayable.

Lambda sends a stream record it gave up on (retries exhausted or too old) to the mapping's on-failure
destination, StreamFailureQueue, as a pointer only: shard and sequence numbers, valid while the stream
keeps the record (24 hours). This package turns those pointers into durable, explained, replayable items
in FailuresTable:

- `handler.replayable` wraps each stream handler: it notes why a record failed (the exception, per
  record, at most NOTES_PER_INVOCATION a call) while Lambda is still retrying it, and it serves replay
  requests (`{"replayParked": {"ids": [...]}}`) by rebuilding the records and running the handler on them;
- `parker.park_message` (FailureParkerFunction, consuming StreamFailureQueue within seconds) reads the
  pointed-at records from the stream while retained and parks each with its payload and the noted reason;
- `replay.request` (the `engage replay` CLI and FailureReplayFunction) sends parked ids back to the
  function that failed them. Handlers are at-least-once safe, so a replay of something already applied
  changes nothing.

docs/reliability.md ("Parked failures and replay") has the design, the guarantees and the costs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engage.failures.store import PARKED, REPLAYED, ParkedFailure, failure_id


# Loaded on first use: every stream handler imports engage.failures.handler, and writes FailuresTable only
# when records fail.
def __getattr__(name: str) -> Any:
    if name in __all__:
        from engage.failures import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PARKED", "REPLAYED", "ParkedFailure", "failure_id"]
