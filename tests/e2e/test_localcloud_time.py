"""Time and events in the local cloud, on throwaway functions (tests/e2e/fixtures/mini_template.yaml).

Schedules (a `Schedule` rule and a `ScheduleV2` Scheduler schedule), EventBridge rule targets
(a Lambda function and a state machine) and Step Functions Wait states, all from the template,
all driven by the virtual clock. Other tests share this cloud and move its clock too, so every
assertion looks only at what happened inside its own time span.
"""
from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest

from engage import clock

pytestmark = [pytest.mark.e2e]


def seen(mini_cloud) -> list[dict]:
    """What the observer function received, oldest first: {"event", "ran_at"}."""
    table = mini_cloud.resource("dynamodb").Table(mini_cloud.physical("SeenTable", "mini"))
    items, page = [], table.scan()
    items += page["Items"]
    while "LastEvaluatedKey" in page:
        page = table.scan(ExclusiveStartKey=page["LastEvaluatedKey"])
        items += page["Items"]
    return sorted(({"event": json.loads(i["event"]), "ran_at": i["ran_at"]} for i in items),
                  key=lambda i: i["ran_at"])


def now(mini_cloud):
    status, _, body = mini_cloud.call("GET", "/_local/clock")
    assert status == 200
    return body


def advance(mini_cloud, duration: str) -> dict:
    status, _, body = mini_cloud.call("POST", "/_local/clock", {"advance": duration})
    assert status == 200, body
    return body


def settle_all(mini_cloud) -> None:
    status, _, body = mini_cloud.call("POST", "/_local/settle", {"executions": True})
    assert status == 200, body


def put_event(mini_cloud, detail_type: str, detail: dict) -> None:
    result = mini_cloud.client("events").put_events(Entries=[{
        "Source": "mini.tests", "DetailType": detail_type, "Detail": json.dumps(detail), "EventBusName": "mini-bus"}])
    assert result["FailedEntryCount"] == 0, result


def test_rate_schedule_runs_once_per_hour_of_virtual_time_in_order(mini_cloud):
    # Given the observer's rate(1 hour) rule and its next occurrence on the clock
    before = now(mini_cloud)
    hourly = [p for p in before["pending"] if "rate(1 hour)" in p["name"]]
    assert len(hourly) == 1, before["pending"]
    first = clock.parse(hourly[0]["at"])
    start = clock.parse(before["now"])
    # When three hours pass
    after = advance(mini_cloud, "PT3H")
    # Then the function ran exactly three times, in order, each at its scheduled virtual moment
    runs = [s for s in seen(mini_cloud) if s["event"].get("detail-type") == "Scheduled Event"
            and start < clock.parse(s["ran_at"]) <= clock.parse(after["now"])]
    expected = [first + timedelta(hours=k) for k in range(3)]
    assert [r["event"]["time"] for r in runs] == [m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in expected]
    # (virtual time flows on from each occurrence, as real time does: each ran in its own hour)
    assert all(m <= clock.parse(r["ran_at"]) < m + timedelta(hours=1) for r, m in zip(runs, expected, strict=True))
    assert all(r["event"]["source"] == "aws.events" and r["event"]["resources"][0].startswith(
        "arn:aws:events:") for r in runs)
    # And the next occurrence is pending, one hour after the last
    assert [p["at"] for p in after["pending"] if "rate(1 hour)" in p["name"]] == [
        clock.iso(expected[-1] + timedelta(hours=1))]


def test_scheduler_cron_schedule_sends_its_input_with_context_attributes(mini_cloud):
    # Given the observer's ScheduleV2 cron(30 2 * * ? *) with an Input template
    start = clock.parse(now(mini_cloud)["now"])
    # When a day passes
    end = clock.parse(advance(mini_cloud, "P1D")["now"])
    # Then it ran once, at 02:30 UTC, with <aws.scheduler.scheduled-time> replaced
    nightly = [s for s in seen(mini_cloud) if s["event"].get("kind") == "nightly"
               and start < clock.parse(s["ran_at"]) <= end]
    assert len(nightly) == 1
    scheduled = clock.parse(nightly[0]["event"]["scheduled"])
    assert (scheduled.hour, scheduled.minute, scheduled.second) == (2, 30, 0)
    assert scheduled <= clock.parse(nightly[0]["ran_at"]) < scheduled + timedelta(minutes=1)


def test_eventbridge_rule_invokes_its_lambda_target_with_the_input_transformer(mini_cloud):
    # Given a rule on mini-bus for source mini.tests / Ping, targeting the observer
    who = uuid.uuid4().hex
    # When a matching event and a non-matching one are put on the bus
    put_event(mini_cloud, "Ping", {"who": who})
    put_event(mini_cloud, "Pong", {"who": who + "-pong"})
    mini_cloud.settle()
    # Then the function received the transformed input of the matching event only
    pings = [s["event"] for s in seen(mini_cloud) if s["event"].get("kind") == "ping"]
    assert {"kind": "ping", "who": who} in pings
    assert not [p for p in pings if p.get("who") == who + "-pong"]


def executions_of(mini_cloud, marker: str) -> list[dict]:
    sfn = mini_cloud.client("stepfunctions")
    machine = mini_cloud.physical("WaitMachine", "mini")
    found = []
    for summary in sfn.list_executions(stateMachineArn=machine)["executions"]:
        described = sfn.describe_execution(executionArn=summary["executionArn"])
        if marker in described["input"]:
            found.append(described)
    return found


def test_three_day_wait_completes_when_the_clock_advances_three_days(mini_cloud):
    # Given an execution of the Wait machine, started by an EventBridge rule (InputPath $.detail)
    marker = uuid.uuid4().hex
    put_event(mini_cloud, "Start Wait", {"marker": marker})
    settle_all(mini_cloud)  # returns although the execution waits: it waits on the virtual clock
    [execution] = executions_of(mini_cloud, marker)
    assert json.loads(execution["input"]) == {"marker": marker}
    assert execution["status"] == "RUNNING"
    # When two days pass, it still waits
    advance(mini_cloud, "P2D")
    settle_all(mini_cloud)
    assert executions_of(mini_cloud, marker)[0]["status"] == "RUNNING"
    # When the third day passes
    advance(mini_cloud, "P1D")
    settle_all(mini_cloud)
    # Then it has succeeded, and its history is readable through the AWS endpoint
    [done] = executions_of(mini_cloud, marker)
    assert done["status"] == "SUCCEEDED"
    history = mini_cloud.client("stepfunctions").get_execution_history(executionArn=done["executionArn"])["events"]
    types = [e["type"] for e in history]
    assert types.index("WaitStateEntered") < types.index("WaitStateExited") < types.index("ExecutionSucceeded")


def test_timestamp_wait_compares_with_virtual_now(mini_cloud):
    # Given an execution waiting until a moment 10 virtual hours ahead (TimestampPath)
    marker = uuid.uuid4().hex
    until = clock.parse(now(mini_cloud)["now"]) + timedelta(hours=10)
    sfn = mini_cloud.client("stepfunctions")
    sfn.start_execution(stateMachineArn=mini_cloud.physical("WaitMachine", "mini"), input=json.dumps(
        {"marker": marker, "until": until.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    settle_all(mini_cloud)
    assert executions_of(mini_cloud, marker)[0]["status"] == "RUNNING"
    # When the clock reaches that moment
    status, _, _ = mini_cloud.call("POST", "/_local/clock", {"to": clock.iso(until + timedelta(seconds=1))})
    assert status == 200
    settle_all(mini_cloud)
    # Then the wait is over
    assert executions_of(mini_cloud, marker)[0]["status"] == "SUCCEEDED"


def test_queue_delays_visibility_timeouts_and_retention_run_on_the_virtual_clock(mini_cloud):
    # Given a queue no function polls, with a one-hour retention
    sqs = mini_cloud.client("sqs")
    url = sqs.create_queue(QueueName=f"timers-{uuid.uuid4().hex[:8]}",
                           Attributes={"MessageRetentionPeriod": "3600"})["QueueUrl"]

    def bodies(**kwargs) -> list[str]:
        return [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, **kwargs).get("Messages", [])]

    # When a message is sent with a 15-minute delay, it is not receivable until 15 virtual minutes pass
    sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=900)
    assert bodies() == []
    advance(mini_cloud, "PT14M")
    assert bodies() == []
    advance(mini_cloud, "PT2M")
    # And received with a 10-minute visibility timeout, it comes back once 10 virtual minutes pass
    assert bodies(VisibilityTimeout=600) == ["delayed"]
    assert bodies() == []
    advance(mini_cloud, "PT11M")
    assert bodies(VisibilityTimeout=600) == ["delayed"]
    # And a timeout changed by ChangeMessageVisibility counts from the virtual now
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    [message] = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0).get("Messages", [])
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=1800)
    advance(mini_cloud, "PT11M")
    assert bodies(VisibilityTimeout=0) == ["delayed"]
    # And once the retention period has passed since each send, nothing is left
    advance(mini_cloud, "PT20M")
    assert sorted(bodies(VisibilityTimeout=0)) == ["delayed", "kept"]
    advance(mini_cloud, "PT1H")
    assert bodies() == []


def test_a_message_past_its_retention_is_gone_and_never_holds_back_the_ones_behind_it(mini_cloud):
    # Given a queue with SQS's shortest retention (a minute), an old message and a newer one behind it
    sqs = mini_cloud.client("sqs")
    url = sqs.create_queue(QueueName=f"retained-{uuid.uuid4().hex[:8]}",
                           Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="old")
    advance(mini_cloud, "PT30S")
    sqs.send_message(QueueUrl=url, MessageBody="new")
    # When the clock passes the old one's retention but not the new one's
    advance(mini_cloud, "PT40S")
    # Then the old one is deleted, as SQS does, and the new one is received: moto stopped every receive at
    # the expired message, so once a failing message outlived its retention its whole queue was stuck
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in received] == ["new"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0" and attributes["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_a_delayed_message_on_a_polled_queue_is_delivered_by_the_clock_move_that_ends_its_delay(mini_cloud):
    # Given the queue worker's queue (polled by the local cloud) and a message delayed 15 minutes
    sqs = mini_cloud.client("sqs")
    applied = mini_cloud.resource("dynamodb").Table(mini_cloud.physical("AppliedTable", "mini"))
    key = f"delayed-{uuid.uuid4().hex[:8]}"
    sqs.send_message(QueueUrl=mini_cloud.physical("WorkQueue", "mini"), MessageBody=json.dumps({"key": key}),
                     DelaySeconds=900)
    settle_all(mini_cloud)
    assert "Item" not in applied.get_item(Key={"pk": key})
    # When 14 virtual minutes pass it is still delayed
    advance(mini_cloud, "PT14M")
    assert "Item" not in applied.get_item(Key={"pk": key})
    # Then the move that passes the 15th minute delivers it before it returns (its settle waits for the poller)
    advance(mini_cloud, "PT1M")
    assert applied.get_item(Key={"pk": key})["Item"]["source"] == "queue"


def test_a_short_delay_on_a_polled_queue_ends_in_real_time_without_a_clock_move(mini_cloud):
    # Given a message delayed 2 seconds: virtual time is real time plus the moves, so it flows on its own
    sqs = mini_cloud.client("sqs")
    applied = mini_cloud.resource("dynamodb").Table(mini_cloud.physical("AppliedTable", "mini"))
    key = f"soon-{uuid.uuid4().hex[:8]}"
    sqs.send_message(QueueUrl=mini_cloud.physical("WorkQueue", "mini"), MessageBody=json.dumps({"key": key}),
                     DelaySeconds=2)
    # When nobody moves the clock, the poller finds it once the 2 seconds have passed
    deadline = time.monotonic() + 15
    while "Item" not in applied.get_item(Key={"pk": key}) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Then it was delivered, in real time
    assert applied.get_item(Key={"pk": key})["Item"]["source"] == "queue"
