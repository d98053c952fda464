"""Push through SNS Publish to a platform endpoint ARN (APNs / FCM apps made in SNS).

The message is SNS's per-platform JSON (`MessageStructure: json`) with a `default` text and the title
and body for APNs and FCM. Cost: 1 SNS request ($0.50 per million mobile push notifications).
"""
from __future__ import annotations

import json
from functools import lru_cache

from botocore.exceptions import BotoCoreError, ClientError

from engage.messaging.channels import OutgoingMessage, classify, provider_client


@lru_cache(maxsize=1)
def _sns():
    return provider_client("sns")


def payload(message: OutgoingMessage) -> str:
    alert = {"title": message.subject, "body": message.body} if message.subject else message.body
    apns = json.dumps({"aps": {"alert": alert}})
    fcm = json.dumps({"notification": {"title": message.subject or "", "body": message.body}})
    return json.dumps({"default": message.body, "APNS": apns, "APNS_SANDBOX": apns, "GCM": fcm})


def send(message: OutgoingMessage) -> str:
    try:
        return _sns().publish(TargetArn=message.address, Message=payload(message),
                              MessageStructure="json")["MessageId"]
    except (ClientError, BotoCoreError) as error:
        raise classify(error) from error


def reset() -> None:
    _sns.cache_clear()
