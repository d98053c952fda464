"""localcloud/faults.py: the configuration, and each fault shaped as AWS shapes it (the e2e harness,
tests/e2e/test_local_faults.py, runs them through the whole pipeline)."""
from __future__ import annotations

import random

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud import faults


def injector(tmp_path, **config) -> faults.Injector:
    return faults.Injector(faults.FaultConfig(log_dir=str(tmp_path), **config), "AudienceRouterFunction")


def test_the_configuration_says_what_is_wrong():
    assert faults.FaultConfig.parse('{"rate": 0.1, "seed": 3}').rate == 0.1
    with pytest.raises(ValueError, match="not JSON"):
        faults.FaultConfig.parse("rate=0.1")
    with pytest.raises(ValueError, match="unknown field.*ratio"):
        faults.FaultConfig.parse('{"ratio": 0.1}')
    with pytest.raises(ValueError, match=r"ENGAGE_FAULTS.crash_rate: a share between 0 and 1"):
        faults.FaultConfig.parse('{"crash_rate": 2}')
    with pytest.raises(ValueError, match="kinds"):
        faults.FaultConfig.parse('{"kinds": ["meteor"]}')
    config = faults.FaultConfig.parse('{"functions": ["IngestFunction"]}')
    assert faults.FaultConfig.parse(config.to_json()) == config


def test_part_of_a_put_events_call_is_refused_and_only_the_rest_is_sent():
    sent = []

    def call(params):
        sent.extend(params["Entries"])
        return {"FailedEntryCount": 0, "Entries": [{"EventId": f"e{i}"} for i in range(len(params["Entries"]))]}

    entries = [{"Detail": str(i)} for i in range(10)]
    answer = faults._partial(random.Random(1), "PutEvents", {"Entries": entries}, call)
    refused = [i for i, e in enumerate(answer["Entries"]) if e.get("ErrorCode") == "ThrottlingException"]
    assert refused and answer["FailedEntryCount"] == len(refused) and len(answer["Entries"]) == 10
    assert [e["Detail"] for e in sent] == [str(i) for i in range(10) if i not in refused]


def test_part_of_a_batch_write_is_left_unprocessed_and_not_written():
    written = []
    items = [{"PutRequest": {"Item": {"pk": {"S": str(i)}}}} for i in range(8)]

    def call(params):
        written.extend(params["RequestItems"]["t"])
        return {"UnprocessedItems": {}}

    answer = faults._partial(random.Random(2), "BatchWriteItem", {"RequestItems": {"t": items}}, call)
    left = answer["UnprocessedItems"]["t"]
    assert left and sorted(map(str, written + left)) == sorted(map(str, items))
    assert not [x for x in left if x in written]


def test_an_outage_fails_every_listed_call_as_throttled_and_is_logged(tmp_path):
    client = boto3.client("events", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    injected = injector(tmp_path, call_rate=0, crash_rate=0)
    (tmp_path / "outage").write_text("PutEvents\n")
    with pytest.raises(ClientError) as raised:
        injected.on_call(client, "PutEvents", {"Entries": []}, lambda params: pytest.fail("sent during an outage"))
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert '"kind": "outage"' in next(tmp_path.glob("faults-*.jsonl")).read_text()
    # And without the file the call goes through
    (tmp_path / "outage").unlink()
    assert injected.on_call(client, "PutEvents", {"Entries": []}, lambda params: {"Entries": []}) == {"Entries": []}


def test_a_transaction_conflict_reads_as_pynamodb_reads_dynamodb(tmp_path):
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    injected = injector(tmp_path, call_rate=1.0, crash_rate=0, kinds=("conflict",))
    with pytest.raises(ClientError) as raised:
        injected.on_call(client, "TransactWriteItems", {"TransactItems": [{}, {}]}, lambda params: {})
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in raised.value.response["CancellationReasons"]] == ["TransactionConflict", "None"]


def test_a_raise_after_a_write_comes_after_the_write(tmp_path):
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    injected = injector(tmp_path, call_rate=0, crash_rate=1.0, kinds=("raise",))
    done = []
    with pytest.raises(faults.InjectedHandlerError, match="after PutItem succeeded"):
        injected.on_call(client, "PutItem", {}, lambda params: done.append(1) or {})
    assert done == [1]
    # Reads never crash
    assert injected.on_call(client, "GetItem", {}, lambda params: {"Item": {}}) == {"Item": {}}


def test_attempt_faults_are_aws_errors_that_botocore_parses_and_retries(tmp_path):
    # Given a DynamoDB client whose every HTTP attempt is throttled (no network: the fault answers)
    from botocore.endpoint import Endpoint

    injected = injector(tmp_path, rate=1.0, kinds=("throttle",))
    original = Endpoint._send
    Endpoint._send = lambda endpoint, request: injected.on_attempt(endpoint, request, lambda r: pytest.fail("sent"))
    try:
        client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
                              endpoint_url="http://127.0.0.1:9", config=Config(retries={"mode": "standard", "max_attempts": 3}))
        with pytest.raises(ClientError) as raised:
            client.get_item(TableName="t", Key={"pk": {"S": "a"}})
    finally:
        Endpoint._send = original
    # Then the SDK saw DynamoDB's own throttling error and retried it as it does on AWS
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    retries = raised.value.response["ResponseMetadata"]["RetryAttempts"]
    assert retries >= 2 and raised.value.response["ResponseMetadata"]["MaxAttemptsReached"]
    assert next(tmp_path.glob("faults-*.jsonl")).read_text().count('"throttle"') == retries + 1
