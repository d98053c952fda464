"""The one rule for an external id's type (`context.externalIds[].type`, `email`, `crm id`, `ios.idfa`).

Ingestion stores any non-empty type up to MAX_ID_TYPE_BYTES; every place that names an id type
(the Profile API's `<id_type>:<value>`, exports, manual audience refs) accepts the same ones, so an
id a profile carries can always be looked up. Control characters are refused where a type is read
from a URL or a request (ingestion keeps what it stored before this rule).
"""
from __future__ import annotations

import re

from engage.dynamodb_limits import utf8_bytes

MAX_ID_TYPE_BYTES = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def problem(id_type: object) -> str | None:
    """Why `id_type` cannot name an id type, or None when it can."""
    if not isinstance(id_type, str) or not id_type:
        return "must be a non-empty string such as email or ios.idfa"
    if utf8_bytes(id_type) > MAX_ID_TYPE_BYTES:
        return f"is longer than {MAX_ID_TYPE_BYTES} bytes"
    if _CONTROL.search(id_type):
        return "contains a control character"
    return None
