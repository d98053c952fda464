"""Real time alone drives the local cloud's schedules (issue 10: the sweeper never ran under `make dev`).

A cloud of its own (tests/e2e/fixtures/tick_template.yaml: one function every minute, on
cron(* * * * ? *)) that nobody moves the clock of. No timed assertions: the invocation log is long-polled with a generous
deadline, and the test only asks that the schedule fired at all, at its own moment.
"""
from __future__ import annotations

import json
import time

import pytest

from engage import clock
from tests.e2e.conftest import FIXTURES, start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]
EVERY_MINUTE = "cron(* * * * ? *)"
DEADLINE_SECONDS = 240  # the first occurrence is the next minute boundary; a busy machine gets three more


def scheduled_times(cloud) -> list[str]:
    """The `time` of each Scheduled Event the observer function recorded."""
    cloud.settle()
    table = cloud.resource("dynamodb").Table(cloud.physical("SeenTable", "tick"))
    events = [json.loads(item["event"]) for item in table.scan()["Items"]]
    return [e["time"] for e in events if e.get("detail-type") == "Scheduled Event"]


def test_a_minute_schedule_fires_on_real_time_without_moving_the_clock():
    # Given a local cloud whose only function runs every minute, and nobody moving its clock
    cloud = start_cloud("--template", str(FIXTURES / "tick_template.yaml"), "--stack-name", "tick")
    try:
        _, _, before = cloud.call("GET", "/_local/clock")
        [pending] = [p for p in before["pending"] if EVERY_MINUTE in p["name"]]
        due = clock.parse(pending["at"])
        moment = due.strftime("%Y-%m-%dT%H:%M:%SZ")  # a Scheduled Event's `time`
        # When real time passes the schedule's moment (long-polling the invocation log). The minute
        # boundary before `due` may have come between the start and the read above: wait for `due` itself.
        runs, seen, after, deadline = [], [], 0, time.monotonic() + DEADLINE_SECONDS
        while moment not in seen and time.monotonic() < deadline:
            _, _, page = cloud.call("GET", f"/_local/invocations?after={after}&wait=20")
            after = page["next"]
            new = [i for i in page["invocations"] if i["function"] == "ObserverFunction"]
            if new:
                runs += new
                seen = scheduled_times(cloud)
        # Then the function ran on its own, without error, with the Scheduled Event of that very moment
        assert runs, "the minute schedule never fired on real time:\n" + "".join(cloud.output[-40:])
        assert all(run["error"] is None for run in runs), runs
        assert moment in seen, (moment, seen)
        # And the clock was never moved: virtual time is still real time
        _, _, now = cloud.call("GET", "/_local/clock")
        assert abs(now["offset_seconds"]) < 1
        assert clock.parse(now["now"]) >= due
        assert next(p for p in now["pending"] if EVERY_MINUTE in p["name"])["at"] > pending["at"]
    finally:
        assert stop_cloud(cloud) == 0, "".join(cloud.output[-40:])
    # And the console shows no errors in normal running (each tick used to print a ValueError traceback)
    console = "".join(cloud.output)
    assert "Traceback" not in console and " ERROR " not in console, console[-4000:]
