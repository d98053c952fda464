"""The stream batching windows are template parameters (docs/benchmarks.md "Batching windows"):
a local cloud started with overrides polls each stream with the overridden window, a default one
with the template's default. No timing is asserted: the pollers report the window they wait."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import start_cloud, stop_cloud

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("localcloud")]

AUDIENCE_PATH = {"ProfileProcessorFunction", "AudienceEvaluatorFunction"}
ACTIVATION = {"AudienceRouterFunction", "JourneyEventsFunction", "DestinationRouterFunction"}


def _windows(cloud) -> dict[str, float]:
    status, _, health = cloud.call("GET", "/_local/health")
    assert status == 200, health
    return {p["logical_id"]: p["batching_window"] for p in health["pollers"]
            if p["logical_id"] in AUDIENCE_PATH | ACTIVATION}


def test_parameter_overrides_reach_the_stream_pollers():
    # Given a local cloud started with both batching windows overridden
    cloud = start_cloud("--param", "AudienceBatchingWindowSeconds=3", "--param", "ActivationBatchingWindowSeconds=7")
    try:
        windows = _windows(cloud)
    finally:
        assert stop_cloud(cloud) == 0, "".join(cloud.output[-40:])
    # Then every stream on the event -> audience path is polled with a 3 s window, the reactions with 7 s
    assert windows == {**dict.fromkeys(AUDIENCE_PATH, 3.0), **dict.fromkeys(ACTIVATION, 7.0)}


def test_without_overrides_the_pollers_wait_the_template_default(local_cloud):
    # Given the shared local cloud, started without parameter overrides
    # Then each stream waits the template's default window: none on the event -> audience path, 1 s for reactions
    assert _windows(local_cloud) == {**dict.fromkeys(AUDIENCE_PATH, 0.0), **dict.fromkeys(ACTIVATION, 1.0)}
