"""localcloud.eventbridge_limits: moto refuses what EventBridge's PutEvents refuses (256 KB a call, counted as
AWS documents; no empty call; more than 10 entries; a Detail that is not a JSON object), with AWS's codes."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from localcloud import eventbridge_limits

REGION = "us-east-1"
LIMIT = 256 * 1024


@pytest.fixture
def events():
    eventbridge_limits.install()
    with mock_aws():
        client = boto3.client("events", region_name=REGION)
        client.create_event_bus(Name="bus")
        yield client


def entry(size: int, **more) -> dict:
    """An entry of exactly `size` bytes as AWS counts it (Source 1 + DetailType 1 + Detail, plus `more`)."""
    base = {"Source": "s", "DetailType": "t", "EventBusName": "bus", **more}
    extra = (14 if "Time" in more else 0) + sum(len(r.encode()) for r in more.get("Resources", []))
    pad = size - 2 - extra - len(json.dumps({"x": ""}))
    made = {**base, "Detail": json.dumps({"x": "a" * pad})}
    assert eventbridge_limits.entry_size(made) == size
    return made


def refused(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    return caught.value.response["Error"]["Message"]


def test_a_call_of_exactly_256_kb_is_put_and_one_byte_more_is_refused_whole(events):
    # moto put any size: code that sent 300 KB a call worked locally and failed on AWS
    assert events.put_events(Entries=[entry(LIMIT // 2), entry(LIMIT // 2)])["FailedEntryCount"] == 0
    assert events.put_events(Entries=[entry(LIMIT)])["FailedEntryCount"] == 0
    message = refused(lambda: events.put_events(Entries=[entry(LIMIT // 2), entry(LIMIT // 2 + 1)]))
    assert message == eventbridge_limits.TOO_LARGE
    assert refused(lambda: events.put_events(Entries=[entry(LIMIT + 1)])) == eventbridge_limits.TOO_LARGE


def test_time_resources_and_utf8_count_as_aws_documents(events):
    resources = ["arn:aws:s3:::bucket-one", "arn:aws:s3:::bücket"]
    at_limit = entry(LIMIT, Time=1_700_000_000, Resources=resources)
    assert events.put_events(Entries=[at_limit])["FailedEntryCount"] == 0
    assert refused(lambda: events.put_events(Entries=[entry(LIMIT + 1, Time=1_700_000_000)]))
    # a 2-byte character counts 2: 131,072 characters of "é" are 262,144 bytes, past the limit with the rest
    accented = {"Source": "s", "DetailType": "t", "EventBusName": "bus", "Detail": json.dumps({"x": "é" * 131_072},
                                                                                             ensure_ascii=False)}
    assert eventbridge_limits.entry_size(accented) > LIMIT
    assert refused(lambda: events.put_events(Entries=[accented])) == eventbridge_limits.TOO_LARGE


def test_more_than_10_entries_or_none_are_refused(events):
    assert events.put_events(Entries=[entry(100)] * 10)["FailedEntryCount"] == 0
    assert "less than or equal to 10" in refused(lambda: events.put_events(Entries=[entry(100)] * 11))
    unchecked = boto3.client("events", region_name=REGION, config=Config(parameter_validation=False))
    assert "greater than or equal to 1" in refused(lambda: unchecked.put_events(Entries=[]))


@pytest.mark.parametrize("detail", ["[1]", '"text"', "3", "null", "not json"])
def test_an_entry_whose_detail_is_not_a_json_object_fails_alone(events, detail):
    bad = {"Source": "s", "DetailType": "t", "EventBusName": "bus", "Detail": detail}
    result = events.put_events(Entries=[entry(100), bad, entry(100)])
    assert result["FailedEntryCount"] == 1
    first, middle, last = result["Entries"]
    assert "EventId" in first and "EventId" in last
    assert middle["ErrorCode"] == "MalformedDetail"
