"""--state-dir: data, the local space and the virtual clock survive a restart."""
from __future__ import annotations

from datetime import timedelta

import pytest

from engage import clock
from tests.e2e.conftest import start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

WRITE_KEY, ACCESS_TOKEN = "local-write-key", "local-access-token"
TRAITS = "/v1/spaces/local/collections/users/profiles/user_id:keeper/traits"
EVENTS = "/v1/spaces/local/collections/users/profiles/user_id:keeper/events?limit=50"


def test_restart_with_state_dir_keeps_profiles_space_and_clock(tmp_path):
    # Given a local cloud with a state dir, a profile in it and the clock ten days ahead
    first = start_cloud(state_dir=tmp_path)
    try:
        assert first.call("POST", "/v1/identify", {"userId": "keeper", "traits": {"plan": "gold"}},
                          auth=WRITE_KEY)[0] == 200
        assert first.call("POST", "/v1/track", {"userId": "keeper", "event": "Kept"}, auth=WRITE_KEY)[0] == 200
        first.settle()
        _, _, moved = first.call("POST", "/_local/clock", {"advance": "P10D"})
    finally:
        # When it is stopped (SIGTERM, like Ctrl-C: settles and saves)
        assert stop_cloud(first) == 0, "".join(first.output[-40:])
    assert (tmp_path / "snapshot.json").exists()

    # And started again on the same state dir
    second = start_cloud(state_dir=tmp_path)
    try:
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
    finally:
        assert stop_cloud(second) == 0, "".join(second.output[-40:])
