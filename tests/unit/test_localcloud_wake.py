"""localcloud pollers wake on writes to their own kind of source: stream pollers on stream writes, queue
pollers on SQS sends, and a write that lands while a poller reads its source cuts its next wait short."""
from __future__ import annotations

import threading
import time

from localcloud import aws
from localcloud.pollers import DynamoDBStreamPoller, SqsPoller


def test_a_write_after_the_read_cuts_the_wait_short():
    signal = aws.WriteSignal()
    seen = signal.generation
    signal.notify()  # lands between the poller's read of its source and its wait
    started = time.monotonic()
    signal.wait(seen, 30, lambda: True)
    assert time.monotonic() - started < 5  # far under the 30 s it would otherwise wait


def test_a_waiting_poller_is_woken_by_a_write():
    signal = aws.WriteSignal()
    seen = signal.generation
    woken = threading.Event()

    def poller():
        signal.wait(seen, 30, lambda: True)
        woken.set()

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    time.sleep(0.05)
    signal.notify()
    assert woken.wait(10)
    thread.join(10)


def test_no_wait_when_the_poller_no_longer_waits():
    signal = aws.WriteSignal()
    started = time.monotonic()
    signal.wait(signal.generation, 30, lambda: False)  # stopping, or a settle asked for a sync
    assert time.monotonic() - started < 5


def test_each_poller_wakes_on_its_own_source():
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/events"
    stream = DynamoDBStreamPoller.__new__(DynamoDBStreamPoller)
    stream.source_arn = table + "/stream/2026-12-01T00:00:00.000"
    assert stream.wake_signal() is aws.on_stream_write(table)
    assert aws.on_stream_write(table) is not aws.on_stream_write(table + "-other")
    queue = SqsPoller.__new__(SqsPoller)
    queue.source_arn = "arn:aws:sqs:us-east-1:123456789012:q"
    assert queue.wake_signal() is aws.on_queue_write(queue.source_arn)
    assert aws.on_queue_write(queue.source_arn) is not aws.on_queue_write(queue.source_arn + "-other")
    assert aws.on_queue_write(queue.source_arn) is not aws.on_stream_write(table)


def test_the_stream_hook_and_the_poller_name_the_same_table():
    """aws's hook on moto's StreamShard.add notifies `shard.table.table_arn`; the poller derives its table
    ARN from the mapping's stream ARN: they must be the same string, or pollers would only wake on
    their idle timer (slower, and no test would fail)."""
    import boto3
    from moto import mock_aws
    from moto.dynamodb.models import dynamodb_backends

    from tests.moto_streams import create_stream_table

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_stream_table(client)
        stream_arn = client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
        table = dynamodb_backends["123456789012"]["us-east-1"].get_table("t")
        poller = DynamoDBStreamPoller.__new__(DynamoDBStreamPoller)
        poller.source_arn = stream_arn
        assert table.stream_shard.table.table_arn == stream_arn.split("/stream/")[0]
        assert poller.wake_signal() is aws.on_stream_write(table.stream_shard.table.table_arn)


def test_sends_to_a_queue_wake_its_poller_only(monkeypatch):
    """The hook aws installs on moto's Queue.add_message (every SendMessage, batch entry and DLQ move)."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws._install_queue_hook()
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        sqs.create_queue(QueueName="other")
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        other = arn.rsplit(":", 1)[0] + ":other"
        before = {"q": aws.on_queue_write(arn).generation, "other": aws.on_queue_write(other).generation,
                  "signals": {k: v.generation for k, v in aws._Hooks.stream_written.items()}}
        sqs.send_message(QueueUrl=url, MessageBody="one")
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "two"},
                                                      {"Id": "b", "MessageBody": "three"}])
        assert aws.on_queue_write(arn).generation - before["q"] == 3
        assert aws.on_queue_write(other).generation == before["other"]
        assert {k: v.generation for k, v in aws._Hooks.stream_written.items()} == before["signals"]


def test_a_queue_poller_asks_over_http_only_when_a_message_is_receivable(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="work", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
        poller = SqsPoller.__new__(SqsPoller)
        poller.source_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        assert not poller._any_visible()  # empty
        sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
        assert not poller._any_visible()  # delayed: ReceiveMessage would not return it either
        sqs.send_message(QueueUrl=url, MessageBody="now")
        assert poller._any_visible()
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=url).get("Messages", [])] == ["now"]
        assert not poller._any_visible()  # in flight until its visibility timeout ends
