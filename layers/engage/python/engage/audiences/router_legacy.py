"""The previous audience routers' publication log (engage.audiences.router reads it only for changes
written before sizes were counted there): one powertools idempotency record per change.

A module of its own, loaded on first use: powertools' idempotency utility is a cold-start cost the
router pays only when a batch holds such a change.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS

from engage.audiences.router import BATCH_ATTEMPTS, IDEMPOTENCY_SECONDS, LEGACY_KEY_PREFIX, element_of, log_id
from engage.config import settings
from engage.db import consistent_batch_get


class LegacyLog(DynamoDBPersistenceLayer):
    """The previous routers' log: one powertools COMPLETED record per change. Read only for changes
    written before the router counted sizes (no `router_counts`), the only ones it can hold, so a
    redelivery across the deploy does not publish them again."""

    def published(self, changes: Iterable[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(changes (log id, element) the old log holds as published, changes whose lookup stayed unprocessed)."""
        keys = {self._get_hashed_idempotency_key(c): (log_id(c), element_of(c)) for c in changes}
        items, unprocessed = consistent_batch_get(self.client, self.table_name, [self._get_key(k) for k in keys],
                                                  attempts=BATCH_ATTEMPTS)
        done = {keys[item[self.key_attr]["S"]] for item in items
                if self._item_to_data_record(item).status == STATUS_CONSTANTS["COMPLETED"]}
        return done, {keys[k[self.key_attr]["S"]] for k in unprocessed}


def log() -> LegacyLog:
    """The log as the previous routers configured it (the router keeps one per container)."""
    legacy = LegacyLog(table_name=settings().require("idempotency_table"))
    legacy.configure(IdempotencyConfig(event_key_jmespath="[space_id, profile_id, audience_key, to_string(version)]",
                                       expires_after_seconds=IDEMPOTENCY_SECONDS), LEGACY_KEY_PREFIX)
    return legacy
