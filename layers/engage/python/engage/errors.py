"""Domain errors. Handlers map them to HTTP in one place each."""
from __future__ import annotations


class EngageError(Exception):
    code = "invalid_request_error"
    status = 400

    def __init__(self, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


class ValidationFailed(EngageError):
    code = "validation_error"
    status = 400


def json_path(loc: tuple) -> str:
    """A pydantic error location as the JSON path a ValidationFailed detail names (`steps.ab.branches[1]`).
    Here, not with a definition language, so one language's module does not load another's models."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.startswith("<"):
            continue  # discriminator tags are not part of the JSON
        else:
            path += f".{part}" if path else str(part)
    return path


class AuthenticationFailed(EngageError):
    code = "authentication_error"
    status = 401


class Forbidden(EngageError):
    code = "forbidden"
    status = 403


class NotFound(EngageError):
    code = "not_found"
    status = 404


class Conflict(EngageError):
    code = "conflict"
    status = 409


class Unavailable(EngageError):
    """A service the call needs refused or failed (throttled, denied, down): nothing was changed; try again."""

    code = "service_unavailable"
    status = 503


class Computing(Conflict):
    """An edit of something whose backfill or recompute is still running (details carry its progress)."""

    code = "computing"
