"""--state-dir: data, the local space and the virtual clock survive a restart, clean (SIGTERM) or not (SIGKILL).

The two tests share one chain of clouds (started, stopped, restarted, killed, restarted): run in file order."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from boto3.dynamodb.conditions import Key

from engage import clock
from tests.e2e.conftest import start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
TRAITS = "/v1/spaces/local/collections/users/profiles/user_id:keeper/traits"
EVENTS = "/v1/spaces/local/collections/users/profiles/user_id:keeper/events?limit=50"


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """A local cloud with a state dir that was stopped cleanly and started again on it (test 1 checks what
    survived), then killed by test 2. One cloud for both: each start of template.yaml costs seconds."""
    state_dir = tmp_path_factory.mktemp("state")
    # Given a local cloud with a state dir, a profile in it and the clock ten days ahead
    first = start_cloud(state_dir=state_dir)
    try:
        assert first.call("POST", "/v1/identify", {"userId": "keeper", "traits": {"plan": "gold"}},
                          auth=WRITE_KEY)[0] == 200
        assert first.call("POST", "/v1/track", {"userId": "keeper", "event": "Kept"}, auth=WRITE_KEY)[0] == 200
        first.settle()
        _, _, moved = first.call("POST", "/_local/clock", {"advance": "P10D"})
    finally:
        # When it is stopped (SIGTERM, like Ctrl-C: settles and saves)
        assert stop_cloud(first) == 0, "".join(first.output[-40:])
    assert (state_dir / "snapshot.json").exists()
    # And started again on the same state dir
    second = start_cloud(state_dir=state_dir)
    yield second, state_dir, moved
    if second.process.poll() is None:  # test 2 kills it; if it did not run, the clean stop is checked here
        assert stop_cloud(second) == 0, "".join(second.output[-40:])


def test_restart_with_state_dir_keeps_profiles_space_and_clock(restarted):
    second, _, moved = restarted
    # Then the same access token still works (the local space was kept, not created twice)
    status, _, traits = second.call("GET", TRAITS, auth=ACCESS_TOKEN)
    assert status == 200, traits
    assert traits["traits"]["plan"] == "gold"
    # And the history is there exactly once: restoring wrote no stream records to re-process
    second.settle()
    history = second.call("GET", EVENTS, auth=ACCESS_TOKEN)[2]["data"]
    assert sorted(e["type"] for e in history) == ["identify", "track"]
    # And the virtual clock is still ten days ahead
    _, _, now = second.call("GET", "/_local/clock")
    assert clock.parse(now["now"]) >= clock.parse(moved["now"])
    assert now["offset_seconds"] >= timedelta(days=10).total_seconds() - 1
    # And new events are accepted with the same write key
    assert second.call("POST", "/v1/track", {"userId": "keeper", "event": "Again"}, auth=WRITE_KEY)[0] == 200
    second.settle()
    assert len(second.call("GET", EVENTS, auth=ACCESS_TOKEN)[2]["data"]) == 3


def _profile_message_ids(cloud, user: str) -> set[str]:
    """Every messageId the Profile API lists for a user (all pages), each once."""
    found, following = [], ""
    while True:
        path = f"/v1/spaces/local/collections/users/profiles/user_id:{user}/events?limit=100"
        status, _, page = cloud.call("GET", path + (f"&next={quote(following)}" if following else ""), auth=ACCESS_TOKEN)
        assert status == 200, page
        found += [e["message_id"] for e in page["data"]]
        if not page["cursor"]["has_more"]:
            assert len(found) == len(set(found)), f"{user}: an event delivered again shows twice"
            return set(found)
        following = page["cursor"]["next"]


def _send_until_killed(cloud, user: str, acknowledged: list[str], stop) -> None:
    """One client: track calls with their own messageIds, as fast as answered; keeps the ids answered 200."""
    import urllib.error

    while not stop.is_set():
        message_id = f"kill-{uuid.uuid4().hex}"
        try:
            status, _, _ = cloud.call("POST", "/v1/track", {"userId": user, "event": "Under Load",
                                                             "messageId": message_id}, auth=WRITE_KEY)
        except (OSError, urllib.error.URLError):
            return  # the process is gone
        if status == 200:
            acknowledged.append(message_id)


def test_every_acknowledged_event_survives_sigkill_under_load(restarted):
    # Given a local cloud with a state dir (the restarted one above), and eight clients sending track
    # calls as fast as it answers
    first, tmp_path, _ = restarted
    users = [f"load-{i}" for i in range(8)]
    acknowledged: dict[str, list[str]] = {user: [] for user in users}
    stop = threading.Event()
    senders = [threading.Thread(target=_send_until_killed, args=(first, user, acknowledged[user], stop))
               for user in users]
    for sender in senders:
        sender.start()
    try:
        # When it is killed (SIGKILL: no drain, no save) once a good number of events were acknowledged,
        # while the clients are still sending and the stream functions are still working
        _, _, page = first.call("GET", "/_local/invocations?after=0&wait=0")
        after = page["next"]
        deadline = time.monotonic() + 600  # generous: a busy machine answers slowly, a dead cloud never
        while sum(map(len, acknowledged.values())) < 100:
            assert time.monotonic() < deadline, "".join(first.output[-40:])
            _, _, page = first.call("GET", f"/_local/invocations?after={after}&wait=20")
            after = page["next"]
        first.process.kill()
        first.process.wait(timeout=60)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=60)
        if first.process.poll() is None:
            first.process.kill()
    sent = {user: list(ids) for user, ids in acknowledged.items()}
    assert sum(map(len, sent.values())) >= 100
    # (the kill came while writes were arriving: the last checkpoint's snapshot does not hold them all)
    journaled = [line for p in tmp_path.glob("journal-*.jsonl") for line in p.read_bytes().splitlines()]
    assert any(b'"kill-' in line for line in journaled)  # this test's writes, not only the test above's

    # And started again on the same state dir
    second = start_cloud(state_dir=tmp_path)
    try:
        # (everything since the last checkpoint is delivered again: generous on a busy machine)
        status, _, settled = second.call("POST", "/_local/settle", {"timeout": 300})
        assert status == 200, settled
        # Then every acknowledged event is in EventsTable
        table = second.resource("dynamodb").Table(second.physical("EventsTable"))
        stored = set()
        for user in users:
            query = {"KeyConditionExpression": Key("pk").eq(f"local|u:{user}")}
            page = table.query(**query)
            stored |= {item["sk"] for item in page["Items"]}
            while "LastEvaluatedKey" in page:
                page = table.query(ExclusiveStartKey=page["LastEvaluatedKey"], **query)
                stored |= {item["sk"] for item in page["Items"]}
        lost = [m for ids in sent.values() for m in ids if m not in stored]
        assert lost == [], f"{len(lost)} of {sum(map(len, sent.values()))} acknowledged events lost"
        # And each was processed onto its profile (what the kill interrupted was delivered again)
        for user, ids in sent.items():
            if ids:
                shown = _profile_message_ids(second, user)
                assert set(ids) <= shown, f"{user}: {len(set(ids) - shown)} acknowledged events not on the profile"
    finally:
        assert stop_cloud(second) == 0, "".join(second.output[-40:])
    assert not list(tmp_path.glob("*.tmp"))
