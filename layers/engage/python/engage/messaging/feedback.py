"""SES feedback: bounce and complaint events (configuration set -> SNS topic -> MessagingFeedbackFunction).

A permanent bounce or a complaint puts the address on the space's suppression list (no message of any
kind is sent to it again, transactional included) and unsubscribes the profile from email (`how`:
bounce | complaint), so GET /v1/messages shows `suppressed: hard bounce` / `suppressed: complaint` for
what follows and `{"subscribed": "email"}` audiences drop the profile. Transient bounces (mailbox full,
greylisting) change nothing. The space and profile come from the message tags the sender put on the
email (engage_space, engage_profile). Idempotent: suppressing twice or unsubscribing an unsubscribed
profile writes nothing new, so SNS's redeliveries are harmless.
Cost per event: 1 PutItem per recipient, 1 GetItem + (at most) 1 UpdateItem of the profile.
"""
from __future__ import annotations

import json
from typing import Any

from engage.errors import NotFound
from engage.messaging import UNSUBSCRIBED, store, subscriptions
from engage.observability import logger


def _tag(mail: dict[str, Any], name: str) -> str | None:
    values = (mail.get("tags") or {}).get(name) or []
    return values[0] if values else None


def handle(notification: dict[str, Any]) -> str:
    """Apply one SES event; what was done ("suppressed", "ignored: ...")."""
    kind = notification.get("eventType") or notification.get("notificationType")
    mail = notification.get("mail") or {}
    space_id, profile_id = _tag(mail, "engage_space"), _tag(mail, "engage_profile")
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        if bounce.get("bounceType") != "Permanent":
            return f"ignored: {bounce.get('bounceType', 'unknown')} bounce"
        reason, how, recipients = "hard bounce", "bounce", bounce.get("bouncedRecipients") or []
    elif kind == "Complaint":
        reason, how = "complaint", "complaint"
        recipients = (notification.get("complaint") or {}).get("complainedRecipients") or []
    else:
        return f"ignored: {kind} event"
    if not space_id:
        logger.warning("SES feedback without engage tags: not ours", extra={"message_id": mail.get("messageId")})
        return "ignored: no engage_space tag"
    for recipient in recipients:
        if recipient.get("emailAddress"):
            store.suppress(space_id, "email", recipient["emailAddress"], reason)
    if profile_id:
        try:
            subscriptions.set_status(space_id, profile_id, "email", UNSUBSCRIBED, how=how)
        except NotFound:
            logger.info("feedback for a profile that is gone", extra={"space": space_id, "profile": profile_id})
    return "suppressed"


def handle_sns_event(event: dict[str, Any]) -> list[str]:
    return [handle(json.loads(record["Sns"]["Message"])) for record in event.get("Records", [])]
