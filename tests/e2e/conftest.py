"""The local cloud as a test fixture: a subprocess per template, on free loopback ports.

A subprocess (not in-process) because moto's backends are process-global and the
integration tests' `aws` fixture resets them. Readiness is the server's own
LOCALCLOUD_READY line (a blocking read, no sleeps), confirmed by GET /_local/health.
Under `pytest -n 2 --dist loadfile` each file runs on one worker; each worker starts the shared
clouds it needs (`local_cloud`, `mini_cloud`) once, and stops them when it leaves tests/e2e.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from localcloud.server import READY

ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent
FIXTURES = E2E / "fixtures"
# About 10 s on an idle 2-core machine; 58 s measured alone on one shared by four other jobs (load 24), and
# more than 120 s there when four clouds started at once: generous, a hung start still fails the fixture.
START_TIMEOUT = 300
# A clock move answers once everything due has run (localcloud.server.CLOCK_SETTLE_SECONDS): wait as long.
CALL_TIMEOUT_SECONDS = 300


@dataclass
class RunningCloud:
    api_url: str
    aws_endpoint: str
    process: subprocess.Popen
    output: list[str]

    def client(self, service: str):
        return boto3.client(service, region_name="us-east-1", endpoint_url=self.aws_endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def resource(self, service: str):
        return boto3.resource(service, region_name="us-east-1", endpoint_url=self.aws_endpoint,
                              aws_access_key_id="testing", aws_secret_access_key="testing")

    def physical(self, logical_id: str, stack: str = "engage") -> str:
        """Physical id of a template resource, from the stack (moto's DescribeStackResource fails on some types)."""
        pages = self.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=stack)
        for page in pages:
            for resource in page["StackResourceSummaries"]:
                if resource["LogicalResourceId"] == logical_id:
                    return resource["PhysicalResourceId"]
        raise KeyError(f"{logical_id} is not in stack {stack}")

    def call(self, method: str, path: str, body=None, headers=None, auth: str | None = None,
             raw: bytes | None = None) -> tuple[int, dict, object]:
        """HTTP to the API; returns (status, headers, parsed JSON or text)."""
        import base64

        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers or {})
        if body is not None and raw is None:
            request.add_header("content-type", "application/json")
        if auth is not None:
            request.add_header("authorization", "Basic " + base64.b64encode(f"{auth}:".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_SECONDS) as response:
                status, headers_out, text = response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            status, headers_out, text = error.code, dict(error.headers), error.read().decode()
        try:
            return status, {k.lower(): v for k, v in headers_out.items()}, json.loads(text)
        except ValueError:
            return status, {k.lower(): v for k, v in headers_out.items()}, text

    def settle(self) -> dict:
        """Block until every stream/queue has been delivered and every async invocation is done."""
        status, _, body = self.call("POST", "/_local/settle", {"timeout": 60})
        assert status == 200, body
        return body


def start_cloud(*args: str, state_dir: Path | None = None) -> RunningCloud:
    command = [sys.executable, "-m", "localcloud.server", "--port", "0", "--aws-port", "0", *args]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ENGAGE_"))}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    watchdog = threading.Timer(START_TIMEOUT, process.kill)  # a hung start fails the fixture, never hangs it
    watchdog.start()
    output: list[str] = []
    try:
        for line in process.stdout:  # blocks until the server prints; ends if it dies
            output.append(line)
            if line.startswith(READY):
                urls = json.loads(line[len(READY):])
                break
        else:
            raise RuntimeError("the local cloud did not start:\n" + "".join(output[-60:]))
    finally:
        watchdog.cancel()
    # Keep draining its output so the server never blocks on a full pipe.
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    cloud = RunningCloud(urls["api_url"], urls["aws_endpoint"], process, output)
    status, _, health = cloud.call("GET", "/_local/health")
    assert status == 200 and health["status"] == "ok", health
    return cloud


def stop_cloud(cloud: RunningCloud) -> int:
    cloud.process.terminate()  # SIGTERM: the same clean stop as Ctrl-C
    try:
        return cloud.process.wait(timeout=120)  # a clean stop settles (30 s at most) and checkpoints
    except subprocess.TimeoutExpired:
        cloud.process.kill()
        # Say where the stop hung: its last lines name each stage it finished (localcloud/server.py stop).
        raise AssertionError("the local cloud did not stop within 120 s of SIGTERM:\n"
                             + "".join(cloud.output[-60:])) from None


# The two shared clouds (one of each per xdist worker): started by the first module that asks, stopped as
# soon as the worker's next test is not an e2e test. Left running, an idle cloud's pollers keep a tenth
# of a core busy while the worker goes on with hundreds of unit tests (tests/conftest.py runs e2e first).
_SHARED_ARGS = {"mini": ("--template", str(FIXTURES / "mini_template.yaml"), "--stack-name", "mini"),
                "local": ()}
_shared: dict[str, RunningCloud] = {}


def _shared_cloud(name: str) -> RunningCloud:
    if name not in _shared:
        _shared[name] = start_cloud(*_SHARED_ARGS[name])
    return _shared[name]


def _stop_shared() -> None:
    """Stop every shared cloud; each must stop cleanly (exit 0), as Ctrl-C would."""
    unclean = []
    while _shared:
        _, cloud = _shared.popitem()
        if stop_cloud(cloud) != 0:
            unclean.append("".join(cloud.output[-40:]))
    assert not unclean, "\n".join(unclean)


@pytest.hookimpl(trylast=True)  # after the item's own fixtures are torn down (they may still use the cloud)
def pytest_runtest_teardown(item, nextitem):
    if _shared and (nextitem is None or E2E not in nextitem.path.parents):
        _stop_shared()


def pytest_sessionfinish(session):
    for cloud in _shared.values():  # only after an interrupted run: the last e2e test's teardown stops them
        cloud.process.kill()


@pytest.fixture(scope="module")
def mini_cloud():
    """The local cloud running tests/e2e/fixtures/mini_template.yaml (throwaway functions), shared."""
    return _shared_cloud("mini")


@pytest.fixture(scope="module")
def local_cloud():
    """The local cloud running the project's template.yaml, with space `local` seeded, shared."""
    return _shared_cloud("local")
