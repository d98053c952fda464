"""A destination's rate limit (requests per second) across every concurrent deliverer.

One counter item per destination and second (DestinationsTable, sk = rate|<unix second>): a take is one
UpdateItem (ADD 1, returning the new count): a ticket. Tickets 1..limit of a second send in it; ticket n
beyond the limit is a place in line, `(n - 1) // limit` seconds back, and the message comes back then
(SQS visibility), which costs no attempt. All consumers share the item, so the limit holds whatever
Lambda's concurrency. Fixed one-second windows: any one second of the clock sees at most `limit`
requests; a sliding second across a window edge can see up to twice that, which receivers' own
limiters (usually per-second or per-minute buckets) tolerate.

Why a place in line and not "try again in a second": with a backlog of B changes and a limit of L, the
last waited B / L seconds and was received once a second meanwhile; past the queue's 30 receives SQS
moved it to the dead-letter queue undelivered (and a first failed send after 16 receives parked it).
Now a message waits about as long as its place says, and is received about twice.
Cost: one write unit per take (as the conditional take before); items expire (TTL) a minute after their second.
"""
from __future__ import annotations

from engage import clock
from engage.db import key
from engage.destinations.store import Destination, DestinationState, destination_pk

MAX_WAIT_SECONDS = 900  # a place further back comes back then and takes a ticket again


def take(destination: Destination) -> int:
    """0 when this request may be sent now; else the seconds to wait for its place in line."""
    limit = destination.definition.rate_limit_per_second
    if not limit:
        return 0
    second = int(clock.now().timestamp())
    item = DestinationState(destination_pk(destination.space_id, destination.key), key("rate", str(second)))
    item.update(actions=[DestinationState.count.add(1), DestinationState.expires_at.set(second + 60)])
    ticket = int(item.count or 0)
    if ticket <= limit:
        return 0
    return min(MAX_WAIT_SECONDS, (ticket - 1) // limit)
