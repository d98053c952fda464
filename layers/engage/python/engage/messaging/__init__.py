"""Messaging: templates (Liquid), channels (SES, SNS SMS and push, webhooks), subscriptions and the one
sender path that journeys, broadcasts and the API share.

    from engage.messaging import SendRequest, send_message
    delivery = send_message(SendRequest(space_id, profile_id, "email", "welcome",
                                        idempotency_key=f"{execution}:{step}",
                                        source={"type": "journey", "key": "onboarding", "step": "welcome"}))

The same idempotency key always answers the same Delivery and sends at most once (engage.messaging.sender
states the rules, the crash window and the cost). The pure parts (templates, rules) need no AWS.
"""
from engage.messaging.sender import (
    Delivery,
    ProviderUnavailable,
    SendInProgress,
    SendRequest,
    send_message,
)

__all__ = ["Delivery", "ProviderUnavailable", "SendInProgress", "SendRequest", "send_message"]
