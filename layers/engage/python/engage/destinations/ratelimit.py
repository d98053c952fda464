"""A destination's rate limit (requests per second) across every concurrent deliverer.

One counter item per destination and second (DestinationsTable, sk = rate|<unix second>): taking a
token is one conditional UpdateItem (ADD 1 if count < limit). All consumers share the item, so the
limit holds whatever Lambda's concurrency; a refused take sends the message back for a second
(SQS visibility), which costs no attempt. Fixed one-second windows: any one second of the clock
sees at most `limit` requests; a sliding second across a window edge can see up to twice that,
which receivers' own limiters (usually per-second or per-minute buckets) tolerate.
Cost: one write unit per request sent; items expire (TTL) a minute later.
"""
from __future__ import annotations

from pynamodb.exceptions import UpdateError

from engage import clock
from engage.db import key
from engage.destinations.store import Destination, DestinationState, destination_pk


def take(destination: Destination, tokens: int = 1) -> bool:
    limit = destination.definition.rate_limit_per_second
    if not limit:
        return True
    second = int(clock.now().timestamp())
    item = DestinationState(destination_pk(destination.space_id, destination.key), key("rate", str(second)))
    try:
        item.update(actions=[DestinationState.count.add(tokens), DestinationState.expires_at.set(second + 60)],
                    condition=DestinationState.count.does_not_exist() | (DestinationState.count <= limit - tokens))
    except UpdateError as error:
        if getattr(error, "cause_response_code", None) == "ConditionalCheckFailedException":
            return False
        raise
    return True
