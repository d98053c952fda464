"""PynamoDB base: table names come from settings (template.yaml's environment), lazily.

Each aggregate module defines its own models on `EngageModel`; this module only knows how
a model finds its table. Keys join parts with `|`, always starting with the space id, so a
space can never read another's items by construction.
"""
from __future__ import annotations

from pynamodb.models import Model

from engage.config import settings

SEP = "|"


class TableName:
    """Descriptor: `Meta.table_name` read from settings each time (cheap: a cached object)."""

    def __init__(self, setting: str):
        self.setting = setting

    def __get__(self, instance, owner) -> str:
        return settings().require(self.setting)


_clients: dict[tuple, object] = {}


class EngageModel(Model):
    class Meta:
        abstract = True

    @classmethod
    def _get_connection(cls):
        # PynamoDB opens one botocore client per model class; creating a client costs tens
        # of milliseconds of cold start, so every model shares one per region/endpoint.
        connection = super()._get_connection()
        inner = connection.connection
        if inner._client is None:
            shared_key = (inner.region, inner.host)
            if shared_key not in _clients:
                _clients[shared_key] = inner.client
            inner._client = _clients[shared_key]
        return connection


def key(*parts: str) -> str:
    for part in parts:
        if SEP in part and part is not parts[-1]:
            raise ValueError(f"key part {part!r} must not contain {SEP!r}")
    return SEP.join(parts)


def models() -> list[type[Model]]:
    """All concrete models (used by tests to drop cached connections)."""
    found, pending = [], list(EngageModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not getattr(cls.Meta, "abstract", False):
            found.append(cls)
    return found


def reset_connections() -> None:
    _clients.clear()
    for model in models():
        model._connection = None
