"""The in-process Lambda runtime on its own: module isolation, environment, errors, code reload, invocation log."""
from __future__ import annotations

import os
import textwrap

import boto3
import botocore.client
import pytest
from moto import mock_aws

from localcloud import runtime as runtime_module
from localcloud.runtime import FunctionSpec, InvocationLog, Runtime


def function(tmp_path, name: str, files: dict[str, str], env: dict[str, str] | None = None) -> FunctionSpec:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for filename, text in files.items():
        (folder / filename).write_text(textwrap.dedent(text))
    return FunctionSpec(logical_id=name, name=f"stack-{name}-X", arn=f"arn:aws:lambda:us-east-1:1:function:stack-{name}-X",
                        handler="app.handler", code_dir=folder, layer_dirs=[], environment=env or {},
                        memory_mb=256, timeout_s=5)


def test_same_named_modules_of_two_functions_never_collide(tmp_path):
    # Given two functions that each import their own `helper` module
    runtime = Runtime({})
    for name, word in (("one", "uno"), ("two", "dos")):
        runtime.add(function(tmp_path, name, {
            "app.py": "from helper import WORD\ndef handler(event, context):\n    return WORD\n",
            "helper.py": f"WORD = {word!r}\n"}))
    # When both are invoked, in turn and again
    results = [runtime.invoke(f"stack-{n}-X", {}).payload for n in ("one", "two", "one", "two")]
    # Then each saw its own module, and neither leaked into the process
    assert results == ["uno", "dos", "uno", "dos"]
    assert "helper" not in __import__("sys").modules


def test_invocation_sees_exactly_its_environment_and_the_process_gets_its_own_back(tmp_path):
    # Given a function with its own environment
    runtime = Runtime({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    runtime.add(function(tmp_path, "env", {"app.py": """
        import os
        def handler(event, context):
            return {k: os.environ.get(k) for k in ("ONLY_HERE", "AWS_ENDPOINT_URL", "AWS_LAMBDA_FUNCTION_NAME")}
        """}, env={"ONLY_HERE": "yes"}))
    before = dict(os.environ)
    # When it runs
    result = runtime.invoke("arn:aws:lambda:us-east-1:1:function:stack-env-X", {})
    # Then it saw its variables and the runtime's, and the process environment is unchanged after
    assert result.payload == {"ONLY_HERE": "yes", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                              "AWS_LAMBDA_FUNCTION_NAME": "stack-env-X"}
    assert dict(os.environ) == before


def test_handler_errors_and_unserializable_results_are_lambda_errors(tmp_path):
    runtime = Runtime({})
    runtime.add(function(tmp_path, "boom", {"app.py": "def handler(event, context):\n    raise KeyError('k')\n"}))
    runtime.add(function(tmp_path, "odd", {"app.py": "def handler(event, context):\n    return {1, 2}\n"}))
    boom = runtime.invoke("stack-boom-X", {})
    assert boom.error["errorType"] == "KeyError" and not boom.ok
    assert runtime.invoke("stack-odd-X", {}).error["errorType"] == "Runtime.MarshalError"


def test_edited_code_is_loaded_again_on_the_next_call(tmp_path):
    # Given a function invoked once
    runtime = Runtime({})
    spec = function(tmp_path, "live", {"app.py": "from helper import V\ndef handler(event, context):\n    return V\n",
                                       "helper.py": "V = 1\n"})
    runtime.add(spec)
    assert runtime.invoke(spec.name, {}).payload == 1
    # When its sibling module is edited (as during `make dev`)
    helper = spec.code_dir / "helper.py"
    helper.write_text("V = 2\n")
    stat = helper.stat()
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    # Then the next call runs the new code
    assert runtime.invoke(spec.name, {}).payload == 2


def test_invocation_log_keeps_each_invocations_steps_and_what_it_carried(tmp_path):
    # Given a function that fails on demand
    runtime = Runtime({})
    runtime.add(function(tmp_path, "log", {"app.py": """
        def handler(event, context):
            if event.get("fail"):
                raise ValueError("asked to")
            return {"statusCode": 200}
        """}))
    http = {"version": "2.0", "routeKey": "POST /v1/track", "requestContext": {"requestId": "REQ1"}}
    stream = {"Records": [{"eventID": "e1", "eventSource": "aws:dynamodb", "eventSourceARN": "arn:stream",
                           "dynamodb": {"Keys": {"pk": {"S": "space|u:1"}, "n": {"N": "7"}},
                                        "ApproximateCreationDateTime": 1_700_000_000.5}}]}
    # When it is invoked by the HTTP API, by a stream poller and directly (failing)
    runtime.invoke("stack-log-X", http, origin={"received": 1_700_000_001.0})
    runtime.invoke("stack-log-X", stream, origin={"read": [1_700_000_000.75]})
    runtime.invoke("stack-log-X", {"fail": True})
    # Then the log holds the three in order, each with its steps in time order
    page = runtime.log.after(0)
    entries = page["invocations"]
    assert [e["seq"] for e in entries] == [1, 2, 3] and page["next"] == 3 and page["missed"] == 0
    for entry in entries:
        assert entry["function"] == "log" and entry["request_id"]
        assert entry["queued"] <= entry["started"] <= entry["handler_started"] <= entry["handler_ended"] \
            <= entry["ended"]
        assert entry["aws_calls"] is None  # AWS calls are only counted once time_aws_calls() is installed
    # And what each carried
    assert entries[0]["trigger"] == "http"
    assert entries[0]["http"] == {"route": "POST /v1/track", "request_id": "REQ1", "received": 1_700_000_001.0}
    assert entries[1]["trigger"] == "stream"
    assert entries[1]["records"] == [{"source": "arn:stream", "id": "e1", "keys": {"pk": "space|u:1", "n": "7"},
                                      "created": 1_700_000_000.5, "read": 1_700_000_000.75}]
    assert (entries[2]["trigger"], entries[2]["error"]) == ("direct", "ValueError")
    assert entries[0]["error"] is None


def test_invocation_log_pages_and_says_what_it_dropped():
    # Given a log that keeps three entries, after five invocations
    log = InvocationLog(limit=3)
    for n in range(5):
        log.append({"n": n})
    # Then a reader from the start learns that two were dropped
    page = log.after(0)
    assert [e["seq"] for e in page["invocations"]] == [3, 4, 5] and page["missed"] == 2 and page["next"] == 5
    # And pages continue where the last one ended
    assert [e["seq"] for e in log.after(3, limit=1)["invocations"]] == [4]
    assert log.after(5) == {"invocations": [], "next": 5, "missed": 0}
    assert log.after(5, wait=0.01)["invocations"] == []
    for bad in ({"seq": -1}, {"seq": 0, "limit": 0}, {"seq": 0, "wait": 60}):
        with pytest.raises(ValueError, match="after >= 0"):
            log.after(**bad)


def test_aws_calls_of_an_invocation_are_counted_and_timed(tmp_path, monkeypatch):
    # Given AWS call timing installed (undone after the test) and a handler making two AWS calls
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", botocore.client.BaseClient._make_api_call)
    monkeypatch.setattr(runtime_module, "_aws_timed", False)
    runtime_module.time_aws_calls()
    runtime = Runtime({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"})
    runtime.add(function(tmp_path, "calls", {"app.py": """
        import boto3
        def handler(event, context):
            client = boto3.client("sts", region_name="us-east-1")
            return [client.get_caller_identity()["Account"] for _ in range(2)]
        """}))
    with mock_aws():
        # When it runs, and a call is made outside any invocation
        result = runtime.invoke("stack-calls-X", {})
        boto3.client("sts", region_name="us-east-1").get_caller_identity()
    # Then its log entry counts its two calls and the time they took; the outside call is nobody's
    assert result.ok, result.error
    entry = runtime.log.after(0)["invocations"][0]
    assert entry["aws_calls"] == 2
    assert 0 < entry["aws_seconds"] <= entry["handler_ended"] - entry["handler_started"]
