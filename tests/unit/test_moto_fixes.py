"""localcloud.moto_fixes: TransactWriteItems backs up only the items it names, and a cancelled
transaction leaves items and stream exactly as before (as on AWS); a table Query reads its partition only
and answers exactly as moto's own; DynamoDB item answers written with json.dumps are what moto's own
model-driven serializer writes."""
from __future__ import annotations

import copy
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.responses import DynamoHandler

from localcloud import moto_fixes
from tests.moto_streams import create_stream_table, stream_records

REGION = "us-east-1"


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto_fixes.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_stream_table(client)
        yield client


def _stream_records(client) -> list[dict]:
    return stream_records(client)


def _item(client, sk: str) -> dict | None:
    return client.get_item(TableName="t", Key={"pk": {"S": "p"}, "sk": {"S": sk}}).get("Item")


def test_a_committed_transaction_writes_items_and_stream_records(table):
    table.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "p"}, "sk": {"S": "a"}, "n": {"N": "1"}}}},
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "p"}, "sk": {"S": "b"}, "n": {"N": "2"}}}},
    ])
    assert _item(table, "a")["n"] == {"N": "1"} and _item(table, "b")["n"] == {"N": "2"}
    assert [r["eventName"] for r in _stream_records(table)] == ["INSERT", "INSERT"]


def test_a_cancelled_transaction_restores_items_and_writes_no_stream_records(table):
    table.put_item(TableName="t", Item={"pk": {"S": "p"}, "sk": {"S": "a"}, "n": {"N": "1"}})
    table.put_item(TableName="t", Item={"pk": {"S": "p"}, "sk": {"S": "c"}})
    with pytest.raises(ClientError) as refused:
        table.transact_write_items(TransactItems=[
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "p"}, "sk": {"S": "a"}},
                        "UpdateExpression": "SET n = :two", "ExpressionAttributeValues": {":two": {"N": "2"}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "p"}, "sk": {"S": "new"}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "p"}, "sk": {"S": "c"}, "n": {"N": "9"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
        ])
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert _item(table, "a")["n"] == {"N": "1"}
    assert _item(table, "new") is None and "n" not in _item(table, "c")
    assert [r["eventName"] for r in _stream_records(table)] == ["INSERT", "INSERT"]


def test_tables_still_deep_copy_outside_transactions(table):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    table.put_item(TableName="t", Item={"pk": {"S": "p"}, "sk": {"S": "a"}})
    live = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].tables["t"]
    clone = copy.deepcopy(live)
    assert clone is not live and clone.items is not live.items


def test_a_table_query_reads_its_partition_only_and_answers_as_before(table):
    # Given items under several partition keys (written out of order)
    for pk, sk in (("b", "2"), ("a", "9"), ("b", "1"), ("c", "1"), ("b", "3"), ("a", "1")):
        table.put_item(TableName="t", Item={"pk": {"S": pk}, "sk": {"S": sk}, "v": {"N": sk}})
    from moto.dynamodb.models.table import Table

    read_everything = []
    real_all_items = Table.all_items

    def counting(self):
        read_everything.append(getattr(moto_fixes._state, "partition", None) is None)
        return real_all_items(self)

    Table.all_items = counting
    try:
        # When partition b is queried forwards, backwards, paged and with a range condition
        forward = table.query(TableName="t", KeyConditionExpression="pk = :p",
                              ExpressionAttributeValues={":p": {"S": "b"}})
        backward = table.query(TableName="t", KeyConditionExpression="pk = :p", ScanIndexForward=False,
                               ExpressionAttributeValues={":p": {"S": "b"}})
        first = table.query(TableName="t", KeyConditionExpression="pk = :p", Limit=2,
                            ExpressionAttributeValues={":p": {"S": "b"}})
        rest = table.query(TableName="t", KeyConditionExpression="pk = :p", ExclusiveStartKey=first["LastEvaluatedKey"],
                           ExpressionAttributeValues={":p": {"S": "b"}})
        ranged = table.query(TableName="t", KeyConditionExpression="pk = :p AND sk > :s",
                             ExpressionAttributeValues={":p": {"S": "b"}, ":s": {"S": "1"}})
        missing = table.query(TableName="t", KeyConditionExpression="pk = :p",
                              ExpressionAttributeValues={":p": {"S": "zz"}})
    finally:
        Table.all_items = real_all_items
    # Then the answers are moto's: the partition's items in range-key order, paged the same way
    assert [i["sk"]["S"] for i in forward["Items"]] == ["1", "2", "3"]
    assert [i["sk"]["S"] for i in backward["Items"]] == ["3", "2", "1"]
    assert [i["sk"]["S"] for i in first["Items"] + rest["Items"]] == ["1", "2", "3"]
    assert [i["sk"]["S"] for i in ranged["Items"]] == ["2", "3"]
    assert missing["Items"] == [] and missing["Count"] == 0
    # And no query gathered the whole table
    assert read_everything and not any(read_everything)


# ---------------------------------------------------------------- fast DynamoDB answers
ITEM = {
    "pk": {"S": "acme|p1"}, "sk": {"S": "profile"},
    "n": {"N": "12.5"}, "big": {"N": "-1e125"}, "flag": {"BOOL": False}, "nothing": {"NULL": True},
    "blob": {"B": b"\x00\xffbytes"}, "blobs": {"BS": [b"a", b"\x01"]},
    "names": {"SS": ["x", "y"]}, "nums": {"NS": ["1", "2.5"]},
    "traits": {"M": {"plan": {"S": "pro"}, "nested": {"M": {"deep": {"L": [{"N": "1"}, {"S": "two"},
                                                                          {"M": {}}, {"L": []}]}}},
                     "empty": {"S": ""}}},
}


@pytest.fixture
def answers_table(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    moto_fixes.install()
    answers: list[tuple[str, str, str]] = []
    fast = DynamoHandler.serialized
    original = DynamoHandler._engage_original_serialized

    def both(self, action_result):
        status, headers, body = fast(self, action_result)
        _, _, reference = original(self, copy.deepcopy(action_result))
        answers.append((self._get_action(), body, reference))
        return status, headers, body

    monkeypatch.setattr(DynamoHandler, "serialized", both)
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                  {"AttributeName": "sk", "AttributeType": "S"}])
        yield client, answers


def test_item_answers_are_what_motos_serializer_writes(answers_table):
    client, answers = answers_table
    key = {"pk": ITEM["pk"], "sk": ITEM["sk"]}
    capacity = {"ReturnConsumedCapacity": "TOTAL"}
    client.put_item(TableName="t", Item=ITEM, ReturnValues="ALL_OLD", **capacity)
    client.put_item(TableName="t", Item={**ITEM, "sk": {"S": "other"}}, **capacity)
    got = client.get_item(TableName="t", Key=key, ConsistentRead=True, **capacity)
    client.get_item(TableName="t", Key={"pk": {"S": "missing"}, "sk": {"S": "x"}})
    client.update_item(TableName="t", Key=key, UpdateExpression="SET n = n + :one REMOVE flag",
                       ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="ALL_NEW", **capacity)
    client.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": ITEM["pk"]},
                 Limit=1, **capacity)
    client.scan(TableName="t", **capacity)
    client.batch_get_item(RequestItems={"t": {"Keys": [key, {"pk": ITEM["pk"], "sk": {"S": "other"}}]}})
    client.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": key}}])
    client.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {**ITEM, "sk": {"S": "third"}}}}]})
    client.transact_write_items(TransactItems=[{"Update": {"TableName": "t", "Key": key,
                                                           "UpdateExpression": "SET extra = :e",
                                                           "ExpressionAttributeValues": {":e": {"S": "x"}}}}])
    client.delete_item(TableName="t", Key=key, ReturnValues="ALL_OLD", **capacity)
    # the answer boto3 read carries every value back as sent (bytes, sets, nesting)
    assert got["Item"] == ITEM
    operations = [operation for operation, _, _ in answers]
    assert set(moto_fixes.FAST_OPERATIONS) <= set(operations), operations
    for operation, body, reference in answers:
        assert json.loads(body) == json.loads(reference), operation


def test_per_request_lookups_are_cached_and_answer_as_before():
    import inspect

    import jsonpath_ng.ext
    import moto.core.responses

    moto_fixes.install()
    names = moto.core.responses.method_names_from_class(DynamoHandler)
    assert names == [n for n, _ in inspect.getmembers(DynamoHandler, predicate=inspect.isfunction)]
    assert moto.core.responses.method_names_from_class(DynamoHandler) is names  # computed once
    path = jsonpath_ng.ext.parse("$.detail.userId")
    assert jsonpath_ng.ext.parse("$.detail.userId") is path
    assert [m.value for m in path.find({"detail": {"userId": "u1"}})] == ["u1"]


def test_received_messages_respect_the_retention_period(monkeypatch):
    """The retention check reads the queue's period directly: within it a message is received, past it
    (a clock moved beyond the period) it is not, as moto's own check answers."""
    import moto.sqs.models

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto_fixes.install()
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="r", Attributes={"MessageRetentionPeriod": "60",
                                                           "VisibilityTimeout": "0"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="kept")
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=url).get("Messages", [])] == ["kept"]
        now = moto.sqs.models.unix_time()
        backend = moto.sqs.models.sqs_backends["123456789012"][REGION]
        message = backend.get_queue("r")._messages[0]
        assert backend.is_message_valid_based_on_retention_period("r", message)
        message.sent_timestamp = (now - 61) * 1000  # sent longer ago than the 60 s period
        assert not backend.is_message_valid_based_on_retention_period("r", message)
        assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []


def test_a_json_template_body_is_read_as_moto_reads_it_and_yaml_still_parses():
    """CreateStack reads a JSON body as JSON: the same dict as moto's YAML-first parse of the local cloud's
    translated mini template (intrinsics, nested lists, escaped unicode); a YAML body still goes through moto's parse."""
    import yaml
    from moto.cloudformation.models import Stack
    from moto.cloudformation.utils import yaml_tag_constructor

    from localcloud import template
    from tests.e2e.conftest import FIXTURES

    moto_fixes.install()
    body = json.dumps({**template.translate(FIXTURES / "mini_template.yaml"), "Description": "caf\u00e9"})
    yaml.add_multi_constructor("", yaml_tag_constructor)
    expected = yaml.load(body, Loader=yaml.Loader)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(yaml, "load", lambda *_, **__: pytest.fail("a JSON body went through PyYAML"))
        assert Stack.parse_template(body) == expected
    assert Stack.parse_template("Resources:\n  Q:\n    Type: AWS::SQS::Queue\n") == {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}


def test_a_stack_list_element_that_is_no_value_is_dropped_as_cloudformation_drops_it(monkeypatch):
    # MembershipsTable's second index exists only while a stack upgrades (MemberIndexUpgrade)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    moto_fixes.install()
    index = {"KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}], "Projection": {"ProjectionType": "KEYS_ONLY"}}
    body = {
        "Parameters": {"Keep": {"Type": "String", "Default": "no"}},
        "Conditions": {"Keeping": {"Fn::Equals": [{"Ref": "Keep"}, "yes"]}},
        "Resources": {"T": {"Type": "AWS::DynamoDB::Table", "Properties": {
            "TableName": "t", "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "g")],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{"IndexName": "new", **index},
                                       {"Fn::If": ["Keeping", {"IndexName": "old", **index}, {"Ref": "AWS::NoValue"}]}]}}}}
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        cloudformation.create_stack(StackName="s", TemplateBody=json.dumps(body))
        indexes = dynamodb.describe_table(TableName="t")["Table"]["GlobalSecondaryIndexes"]
        assert [i["IndexName"] for i in indexes] == ["new"]
        cloudformation.create_stack(StackName="s2", TemplateBody=json.dumps(
            {**body, "Resources": {"T": {**body["Resources"]["T"], "Properties": {
                **body["Resources"]["T"]["Properties"], "TableName": "t2"}}}}),
            Parameters=[{"ParameterKey": "Keep", "ParameterValue": "yes"}])
        indexes = dynamodb.describe_table(TableName="t2")["Table"]["GlobalSecondaryIndexes"]
        assert [i["IndexName"] for i in indexes] == ["new", "old"]
