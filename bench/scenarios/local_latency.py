"""Latency on the local cloud: POST /v1/track -> profile shows the event -> audience membership visible.

The local cloud (template.yaml, moto server, in-process Lambdas, stream pollers) runs in a
subprocess as `make dev` runs it. Each probe is a new user sending one `Latency Probe` track
call; we poll the Profile API (every 5 ms) until /events lists it, then until /traits shows the
`latency_probe` audience true. Sequential probes, p50/p95. What is measured includes the local
pollers' intervals and moto's ~9 ms per AWS call: it is the local developer experience, not AWS.
"""
from __future__ import annotations

import statistics
import time

from bench.report import Figure
from tests.e2e.conftest import start_cloud, stop_cloud

WRITE, TOKEN = "local-write-key", "local-access-token"


def _wait(check, timeout: float = 30.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError("probe not visible in 30 s")


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def run(context) -> list[Figure]:
    probes = 200 if context.full else 50
    cloud = start_cloud()
    try:
        status, _, body = cloud.call("POST", "/v1/audiences", {"key": "latency_probe", "name": "Latency probe",
                                                               "condition": {"event": "Latency Probe"}}, auth=TOKEN)
        assert status == 201, body
        cloud.settle()
        to_profile, to_audience = [], []
        for i in range(probes):
            user = f"probe-{i}"
            base = f"/v1/spaces/local/collections/users/profiles/user_id:{user}"
            started = time.perf_counter()
            status, _, body = cloud.call("POST", "/v1/track", {"userId": user, "event": "Latency Probe"}, auth=WRITE)
            assert status == 200, body
            seen = _wait(lambda base=base: (r := cloud.call("GET", base + "/events", auth=TOKEN))[0] == 200
                         and len(r[2]["data"]) == 1)
            member = _wait(lambda base=base: (r := cloud.call("GET", base + "/traits?class=audience",
                                                              auth=TOKEN))[0] == 200
                           and r[2]["traits"].get("latency_probe") is True)
            to_profile.append((seen - started) * 1000)
            to_audience.append((member - started) * 1000)
    finally:
        stop_cloud(cloud)
    method = f"{probes} sequential probes, new user each, Profile API polled every 5 ms"
    return [
        Figure("Local cloud latency", "track -> profile updated, p50", _percentile(to_profile, 50), "ms", method),
        Figure("Local cloud latency", "track -> profile updated, p95", _percentile(to_profile, 95), "ms", method),
        Figure("Local cloud latency", "track -> audience membership visible, p50", _percentile(to_audience, 50),
               "ms", method),
        Figure("Local cloud latency", "track -> audience membership visible, p95", _percentile(to_audience, 95),
               "ms", method),
    ]
