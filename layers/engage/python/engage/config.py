"""Settings read once from the environment that template.yaml gives every function.

Logic never touches os.environ: it asks `settings()`. Tests and the local cloud call
`settings.cache_clear()` after changing the environment.
"""
from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel


class Settings(BaseModel):
    config_table: str = ""
    events_table: str = ""
    profiles_table: str = ""
    identity_table: str = ""
    profile_events_table: str = ""
    memberships_table: str = ""
    links_table: str = ""
    event_bus_name: str = ""
    # Audience engine (engage.audiences): due-time index, router idempotency, backfill machine.
    due_table: str = ""
    idempotency_table: str = ""
    audience_backfill_state_machine: str = ""
    # Warm-container cache of a space's audience definitions, in seconds.
    audience_cache_seconds: int = 30
    # Shards per due-time bucket: spreads the sweeper index's writes over partitions.
    due_shards: int = 16
    # Days an ingested event (and its dedupe key) is kept; Segment dedupes for 24 h at least.
    event_retention_days: int = 400
    # Warm-container cache of write key / token lookups, in seconds.
    credential_cache_seconds: int = 60

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise RuntimeError(f"{name.upper()} is not set: template.yaml gives it to the function's environment")
        return value


@lru_cache(maxsize=1)
def settings() -> Settings:
    fields = Settings.model_fields
    values = {name: os.environ[name.upper()] for name in fields if name.upper() in os.environ}
    return Settings.model_validate(values)
