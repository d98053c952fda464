"""SMS through SNS Publish to a phone number (one request per message).

SNS SMS is what moto implements; AWS's newer End User Messaging SMS (pinpoint-sms-voice-v2
SendTextMessage) adds origination identities and per-country registration. Replacing this module is
all a switch takes. Messages are sent Transactional when the send is, else Promotional (SNS's price and
route differ per type). Cost: 1 SNS request plus the per-country SMS price.
"""
from __future__ import annotations

from functools import lru_cache

from botocore.exceptions import BotoCoreError, ClientError

from engage.messaging.channels import OutgoingMessage, classify, provider_client


@lru_cache(maxsize=1)
def _sns():
    return provider_client("sns")


def send(message: OutgoingMessage) -> str:
    kind = "Transactional" if message.tags.get("transactional") == "true" else "Promotional"
    try:
        return _sns().publish(PhoneNumber=message.address, Message=message.body, MessageAttributes={
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": kind}})["MessageId"]
    except (ClientError, BotoCoreError) as error:
        raise classify(error) from error


def reset() -> None:
    _sns.cache_clear()
