"""Channels: one small module per provider, each `send(message) -> provider message id`.

A channel raises `Refused` when the provider rejected the message for good (it was not sent and a
retry would not help: a bad address, a rejected sender), `Unavailable` when it was not sent but a
retry may succeed (throttling, 5xx before acceptance). Any other exception leaves the outcome unknown.
Swapping a provider (SNS SMS -> End User Messaging SMS, say) means replacing one module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError


class Refused(Exception):
    """The provider said no, for good: not sent."""


class Unavailable(Exception):
    """The provider did not take the message now: not sent, retry later."""


@dataclass(frozen=True)
class OutgoingMessage:
    channel: str
    address: str  # email address, E.164 phone number, SNS endpoint ARN or webhook URL
    subject: str | None
    body: str
    text: str | None = None
    from_address: str | None = None
    configuration_set: str | None = None
    unsubscribe_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    space_id: str = ""
    template: str = ""
    tags: dict[str, str] = field(default_factory=dict)


RETRYABLE_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException", "ServiceUnavailable",
                   "InternalFailure", "InternalError", "InternalErrorException", "KMSThrottlingException",
                   "LimitExceededException", "SendingPausedException"}


def classify(error: Exception) -> Exception:
    """An AWS error as Refused / Unavailable (the call answered, so nothing was sent)."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
        message = error.response.get("Error", {}).get("Message", "")
        if code in RETRYABLE_CODES or status >= 500:
            return Unavailable(f"{code}: {message}")
        return Refused(f"{code}: {message}")
    if isinstance(error, BotoCoreError):
        return error  # connection trouble: whether the request arrived is unknown
    return error


def send(message: OutgoingMessage) -> str:
    from engage.messaging.channels import email, push, sms, webhook

    senders: dict[str, Any] = {"email": email.send, "sms": sms.send, "push": push.send, "webhook": webhook.send}
    return senders[message.channel](message)
