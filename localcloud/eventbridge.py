"""EventBridge rules, scheduled rules and EventBridge Scheduler schedules, on the virtual clock.

moto stores rules and schedules but delivers PutEvents only to SQS/Logs/archives/buses,
matches scheduled rules against every event, and never fires a schedule. This extension:
- PutEvents (any bus): each ENABLED rule with an event pattern is matched with moto's own
  matcher; Lambda targets are invoked asynchronously in-process (the Event invocation path),
  Step Functions targets start an execution; other targets stay with moto. Input,
  InputPath and InputTransformer are applied. An entry without `Time` is stamped with the
  virtual clock (what `time` says in the delivered event).
- Scheduled rules (`Schedule` events, ScheduleExpression on AWS::Events::Rule) send the
  "Scheduled Event" to their targets; Scheduler schedules (`ScheduleV2`) send their Input
  (context attributes such as <aws.scheduler.scheduled-time> replaced; `{}` without Input).
  rate()/cron()/at() (localcloud/cron.py) fire on the virtual clock, each at its own moment.
- Real time drives the clock too: a ticker runs whatever has come due by the (offset) real
  time, so under `make dev` the minute schedules fire every minute, as on AWS.

Catch-up: a clock jump fires every occurrence in order, but at most CATCH_UP occurrences of
one schedule per move; past that, the schedule skips to its last occurrence before the
target (logged). Advancing two days must not mean 2,880 sweeper runs.
Everything comes from the deployed stack (the rules and schedules moto holds).
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from engage import clock as engage_clock
from localcloud import cron
from localcloud.aws import ACCOUNT_ID

log = logging.getLogger("localcloud.eventbridge")
CATCH_UP = 24  # occurrences of one schedule per clock move before it skips ahead (a day of an hourly one)
TICK_SECONDS = 1.0


class _Hooks:
    local = None  # the running LocalCloud (moto patches are process-wide and installed once)
    installed = False


# ---------------------------------------------------------------- delivery
def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_input(target: dict, event: dict) -> Any:
    """What a rule target receives: Input, InputPath, InputTransformer or the whole event."""
    if "Input" in target:
        return _json_or_text(target["Input"])
    if "InputPath" in target:
        from jsonpath_ng.ext import parse

        matches = parse(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if "InputTransformer" in target:
        from moto.events.utils import EventTemplateParser

        transformer = target["InputTransformer"]
        try:
            return EventTemplateParser.parse(transformer.get("InputTemplate"),
                                             transformer.get("InputPathsMap", {}), event)
        except ValueError:  # a plain-text template: AWS sends the text
            return transformer.get("InputTemplate")
    return event


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def deliver(arn: str, payload: Any, region: str) -> None:
    """Send `payload` to a target: Lambda (async invoke), Step Functions (execution), SQS."""
    local = _Hooks.local
    service = arn.split(":")[2] if arn.count(":") >= 5 else ""
    try:
        if service == "lambda":
            local.runtime.invoke_async(arn, payload)
        elif service == "states":
            from moto.stepfunctions.parser.models import stepfunctions_parser_backends

            backend = stepfunctions_parser_backends[ACCOUNT_ID][region]
            backend.start_execution(arn, name=str(uuid.uuid4()), execution_input=json.dumps(payload))
        elif service == "sqs":
            from moto.sqs.models import sqs_backends

            body = payload if isinstance(payload, str) else json.dumps(payload)
            sqs_backends[ACCOUNT_ID][region].send_message(queue_name=arn.split(":")[5], message_body=body)
        else:
            log.warning("target %s: only Lambda, Step Functions and SQS targets are emulated", arn)
    except Exception:  # AWS delivers asynchronously: a failed target never fails the sender
        log.exception("delivery to %s failed", arn)


def _install_patches() -> None:
    from moto.events.models import EventsBackend, Rule

    original_send = Rule.send_to_targets

    def send_to_targets(self, original_event, transform_input=True):
        # Scheduled rules have no pattern (moto's empty pattern matches everything); disabled rules are off.
        if self.state != "ENABLED" or not self.event_pattern.get_pattern():
            return
        if not self.event_pattern.matches_event(original_event):
            return
        event = dict(original_event)
        if isinstance(event.get("time"), (int, float)):
            event["time"] = _iso(datetime.fromtimestamp(event["time"], UTC))
        ours = [t for t in self.targets if t["Arn"].split(":")[2] in ("lambda", "states")]
        rest = [t for t in self.targets if t not in ours]
        if rest:
            others = copy.copy(self)
            others.targets = rest
            original_send(others, original_event, transform_input)
        for target in ours:
            deliver(target["Arn"], event_input(target, event), self.region_name)

    Rule.send_to_targets = send_to_targets

    original_put = EventsBackend.put_events

    def put_events(self, events):
        now = engage_clock.now().timestamp()
        return original_put(self, [e if e.get("Time") else {**e, "Time": now} for e in events])

    EventsBackend.put_events = put_events


# ---------------------------------------------------------------- schedules
class Schedule:
    """One rule or Scheduler schedule, armed on the virtual clock one occurrence at a time."""

    def __init__(self, name: str, expression, send, clock, start: datetime):
        self.name, self.expression, self.send, self.clock = name, expression, send, clock
        self.start = start
        self.move: object = None
        self.fired_in_move = 0
        self.timer = None

    def arm(self, after: datetime) -> None:
        when = self.expression.next_after(after, self.start)
        if when is not None:
            self.timer = self.clock.call_at(when, self.fire, self.name)

    def fire(self, moment: datetime) -> None:
        target = self.clock.moving_to
        if target is not self.move:
            self.move, self.fired_in_move = target, 0
        self.fired_in_move += 1
        self.send(moment)
        after = moment
        if target is not None and self.fired_in_move >= CATCH_UP:
            skipped, last = 0, moment
            while (following := self.expression.next_after(last, self.start)) is not None and following <= target:
                last, skipped = following, skipped + 1
            if skipped > 1:
                log.warning("%s: skipped %d occurrences in one clock move (at most %d run)",
                            self.name, skipped - 1, CATCH_UP)
                after = last - timedelta(seconds=1)  # occurrences are whole minutes: the last one still runs
        self.arm(after)


def _rule_schedules(local) -> list[Schedule]:
    from moto.events.models import events_backends

    schedules = []
    backend = events_backends[ACCOUNT_ID][local.region]
    for bus in backend.event_buses.values():
        for rule in bus.rules.values():
            if not rule.scheduled_expression or rule.state != "ENABLED":
                continue
            expression = cron.expression(rule.scheduled_expression)

            def send(moment, rule=rule):
                event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                         "source": "aws.events", "account": ACCOUNT_ID, "time": _iso(moment),
                         "region": local.region, "resources": [rule.arn], "detail": {}}
                for target in rule.targets:
                    deliver(target["Arn"], event_input(target, event), local.region)

            schedules.append(Schedule(f"rule {rule.name} {rule.scheduled_expression}", expression, send,
                                      local.clock, engage_clock.now()))
    return schedules


def _scheduler_schedules(local) -> list[Schedule]:
    from moto.scheduler.models import scheduler_backends

    backend = scheduler_backends[ACCOUNT_ID][local.region]
    items = sorted((s for g in backend.schedule_groups.values() for s in g.schedules.values()), key=lambda s: s.arn)
    _armed.clear()
    for item in items:
        if item.state == "ENABLED":
            _armed[item.arn] = _scheduler_schedule(local, item)
    return list(_armed.values())


def _scheduler_schedule(local, item) -> Schedule:
    expression = cron.expression(item.schedule_expression, item.schedule_expression_timezone)

    def send(moment, item=item):
        text = item.target.get("Input")
        if text is None:
            payload = {}
        else:
            for key, value in (("schedule-arn", item.arn), ("scheduled-time", _iso(moment)),
                               ("execution-id", uuid.uuid4().hex[:16]), ("attempt-number", "1")):
                text = text.replace(f"<aws.scheduler.{key}>", value)
            payload = _json_or_text(text)
        deliver(item.target["Arn"], payload, local.region)

    return Schedule(f"schedule {item.group_name}/{item.name} {item.schedule_expression}",
                    expression, send, local.clock, engage_clock.now())


# ---------------------------------------------------------------- schedules made at run time
# Scheduler schedules created, updated or deleted through the API while the cloud runs (destinations'
# batch schedules, made by the management API) are armed, re-armed or cancelled at once, by ARN.
_armed: dict[str, Schedule] = {}


def _rearm(arn: str, item) -> None:
    local = _Hooks.local
    if local is None:
        return
    previous = _armed.pop(arn, None)
    if previous is not None and previous.timer is not None:
        previous.timer.cancel()
    if item is not None and item.state == "ENABLED":
        schedule = _scheduler_schedule(local, item)
        schedule.arm(engage_clock.now())
        _armed[arn] = schedule


def _install_scheduler_patches() -> None:
    from moto.scheduler.models import EventBridgeSchedulerBackend

    original_create = EventBridgeSchedulerBackend.create_schedule
    original_update = EventBridgeSchedulerBackend.update_schedule
    original_delete = EventBridgeSchedulerBackend.delete_schedule

    def create_schedule(self, *args, **kwargs):
        item = original_create(self, *args, **kwargs)
        _rearm(item.arn, item)
        return item

    def update_schedule(self, *args, **kwargs):
        item = original_update(self, *args, **kwargs)
        _rearm(item.arn, item)
        return item

    def delete_schedule(self, group_name, name):
        item = self.get_schedule(group_name=group_name, name=name)
        original_delete(self, group_name, name)
        _rearm(item.arn, None)

    EventBridgeSchedulerBackend.create_schedule = create_schedule
    EventBridgeSchedulerBackend.update_schedule = update_schedule
    EventBridgeSchedulerBackend.delete_schedule = delete_schedule


class Ticker(threading.Thread):
    """Lets real time drive the virtual clock: runs the timers that have come due since the last tick."""

    def __init__(self, clock):
        super().__init__(name="localcloud-clock-ticker", daemon=True)
        self.clock = clock
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            pending = self.clock.pending()
            if pending and pending[0].when <= engage_clock.now():
                try:
                    self.clock.run_due()
                except Exception:  # a failing callback is logged by the clock; this is the clock itself
                    log.exception("running due timers failed")

    def stop(self) -> None:
        self.stopped.set()


def install(local) -> None:
    """Extension: rule targets, scheduled rules, Scheduler schedules, and real time driving the clock."""
    _Hooks.local = local
    if not _Hooks.installed:
        _install_patches()
        _install_scheduler_patches()
        _Hooks.installed = True
    now = engage_clock.now()
    for schedule in [*_rule_schedules(local), *_scheduler_schedules(local)]:
        schedule.arm(now)
    ticker = Ticker(local.clock)
    ticker.start()
    local.on_stop.append(ticker.stop)
