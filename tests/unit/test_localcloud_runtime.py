"""The local Lambda runtime on its own: worker processes per function (isolation, environment, errors,
timeouts, crashes, code reload, concurrency, the virtual clock), and the invocation log."""
from __future__ import annotations

import os
import textwrap

import pytest

from localcloud import runtime as runtime_module
from localcloud.runtime import FunctionSpec, InvocationLog, Runtime


def function(tmp_path, name: str, files: dict[str, str], env: dict[str, str] | None = None,
             timeout_s: int = 5, reserved: int | None = None) -> FunctionSpec:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for filename, text in files.items():
        (folder / filename).write_text(textwrap.dedent(text))
    return FunctionSpec(logical_id=name, name=f"stack-{name}-X", arn=f"arn:aws:lambda:us-east-1:1:function:stack-{name}-X",
                        handler="app.handler", code_dir=folder, layer_dirs=[], environment=env or {},
                        memory_mb=256, timeout_s=timeout_s, reserved_concurrency=reserved)


@pytest.fixture
def make_runtime():
    """Runtimes whose worker processes are all ended after the test."""
    made: list[Runtime] = []

    def make(base_env: dict[str, str] | None = None, concurrency: int | None = None) -> Runtime:
        made.append(Runtime(base_env or {}, concurrency))
        return made[-1]

    yield make
    for runtime in made:
        runtime.stop()


def test_same_named_modules_of_two_functions_never_collide(tmp_path, make_runtime):
    # Given two functions that each import their own `helper` module
    runtime = make_runtime()
    for name, word in (("one", "uno"), ("two", "dos")):
        runtime.add(function(tmp_path, name, {
            "app.py": "from helper import WORD\ndef handler(event, context):\n    return WORD\n",
            "helper.py": f"WORD = {word!r}\n"}))
    # When both are invoked, in turn and again
    results = [runtime.invoke(f"stack-{n}-X", {}).payload for n in ("one", "two", "one", "two")]
    # Then each saw its own module, and neither leaked into the process
    assert results == ["uno", "dos", "uno", "dos"]
    assert "helper" not in __import__("sys").modules


def test_invocation_sees_exactly_its_environment_and_the_process_gets_its_own_back(tmp_path, make_runtime,
                                                                                    monkeypatch):
    # Given a function with its own environment, and a variable of this process that is none of its business
    monkeypatch.setenv("NOT_THE_FUNCTIONS", "secret")
    runtime = make_runtime({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    runtime.add(function(tmp_path, "env", {"app.py": """
        import os
        def handler(event, context):
            return {k: os.environ.get(k) for k in ("ONLY_HERE", "AWS_ENDPOINT_URL", "AWS_LAMBDA_FUNCTION_NAME",
                                                   "NOT_THE_FUNCTIONS")}
        """}, env={"ONLY_HERE": "yes"}))
    before = dict(os.environ)
    # When it runs
    result = runtime.invoke("arn:aws:lambda:us-east-1:1:function:stack-env-X", {})
    # Then it saw its variables and the runtime's, not this process's, and this process's are unchanged
    assert result.payload == {"ONLY_HERE": "yes", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                              "AWS_LAMBDA_FUNCTION_NAME": "stack-env-X", "NOT_THE_FUNCTIONS": None}
    assert dict(os.environ) == before


def test_handler_errors_and_unserializable_results_are_lambda_errors(tmp_path, make_runtime):
    runtime = make_runtime()
    runtime.add(function(tmp_path, "boom", {"app.py": "def handler(event, context):\n    raise KeyError('k')\n"}))
    runtime.add(function(tmp_path, "odd", {"app.py": "def handler(event, context):\n    return {1, 2}\n"}))
    boom = runtime.invoke("stack-boom-X", {})
    assert boom.error["errorType"] == "KeyError" and not boom.ok
    assert runtime.invoke("stack-odd-X", {}).error["errorType"] == "Runtime.MarshalError"


def test_edited_code_is_loaded_again_on_the_next_call(tmp_path, make_runtime):
    # Given a function invoked once
    runtime = make_runtime()
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


def test_invocation_log_keeps_each_invocations_steps_and_what_it_carried(tmp_path, make_runtime):
    # Given a function that fails on demand
    runtime = make_runtime()
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
        assert entry["aws_calls"] is None  # AWS calls are only counted once time_aws_calls() is on
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


def test_aws_calls_of_an_invocation_are_counted_and_timed(tmp_path, make_runtime, monkeypatch):
    # Given AWS call counting on (undone after the test), a moto server, and a handler making two AWS calls
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    monkeypatch.setattr(runtime_module, "_aws_timed", False)
    runtime_module.time_aws_calls()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        runtime = make_runtime({"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
        runtime.add(function(tmp_path, "calls", {"app.py": """
            import boto3
            client = boto3.client("sts", region_name="us-east-1")
            client.get_caller_identity()  # during init: no invocation's
            def handler(event, context):
                return [client.get_caller_identity()["Account"] for _ in range(2)]
            """}))
        # When it runs
        result = runtime.invoke("stack-calls-X", {})
    finally:
        server.stop()
    # Then its log entry counts its two calls and the time they took; the call made at init is nobody's
    assert result.ok, result.error
    entry = runtime.log.after(0)["invocations"][0]
    assert entry["aws_calls"] == 2
    assert 0 < entry["aws_seconds"] <= entry["handler_ended"] - entry["handler_started"]


def test_a_timed_out_invocation_is_ended_and_the_next_call_starts_a_new_worker(tmp_path, make_runtime):
    # Given a function with a one-second timeout whose handler can hang
    runtime = make_runtime()
    spec = function(tmp_path, "slow", {"app.py": """
        import os, threading
        def handler(event, context):
            if event.get("hang"):
                threading.Event().wait()
            return os.getpid()
        """}, timeout_s=1)
    runtime.add(spec)
    first = runtime.invoke(spec.name, {})
    # When a call hangs past the timeout
    hung = runtime.invoke(spec.name, {"hang": True})
    # Then it is a Lambda timeout, and its worker process was ended
    assert hung.error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in hung.error["errorMessage"]
    entries = runtime.log.after(0)["invocations"]
    assert entries[1]["worker"] == first.payload and entries[1]["error"] == "Sandbox.Timedout"
    with pytest.raises(ProcessLookupError):
        os.kill(first.payload, 0)
    # And the next call runs, cold, in a new worker
    again = runtime.invoke(spec.name, {})
    assert again.ok and again.payload != first.payload and runtime.log.after(2)["invocations"][0]["cold"]


def test_a_crashed_worker_is_a_runtime_exit_error_and_an_import_error_is_retried(tmp_path, make_runtime):
    # Given a function that can kill its own process, and one whose import fails until it is fixed
    runtime = make_runtime()
    crash = function(tmp_path, "crash", {"app.py": """
        import os
        def handler(event, context):
            if event.get("exit"):
                os._exit(3)
            return "alive"
        """})
    broken = function(tmp_path, "broken", {"app.py": "import not_a_module_anywhere\ndef handler(e, c):\n    return 1\n"})
    for spec in (crash, broken):
        runtime.add(spec)
    # When the process exits mid-call
    died = runtime.invoke(crash.name, {"exit": True})
    # Then the call is a Runtime.ExitError and the next one gets a new worker
    assert died.error["errorType"] == "Runtime.ExitError" and "exit status 3" in died.error["errorMessage"]
    assert runtime.invoke(crash.name, {}).payload == "alive"
    # And a failed import is Lambda's Runtime.ImportModuleError, retried (cold) on the next call
    failed = runtime.invoke(broken.name, {})
    assert failed.error["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'app'" in failed.error["errorMessage"]
    app = broken.code_dir / "app.py"
    app.write_text("def handler(e, c):\n    return 1\n")
    stat = app.stat()
    os.utime(app, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert runtime.invoke(broken.name, {}).payload == 1


MEET = """
    import os, pathlib, time
    def handler(event, context):
        # Arrive, then wait (bounded) for the other invocation to be there too (arrived, not yet gone).
        folder = pathlib.Path(event["folder"])
        (folder / event["me"]).touch()
        deadline, met = time.monotonic() + event["patience"], False
        while time.monotonic() < deadline and not met:
            met = (folder / event["other"]).exists() and not (folder / (event["other"] + "-gone")).exists()
            time.sleep(0.01)
        (folder / (event["me"] + "-gone")).touch()
        return {"met": met, "pid": os.getpid()}
    """


def _meet(runtime, name: str, folder, patience: float) -> list:
    import threading

    results = [None, None]

    def call(n: int) -> None:
        try:
            results[n] = runtime.invoke(name, {"folder": str(folder), "me": f"m{n}", "other": f"m{1 - n}",
                                               "patience": patience}).payload
        except Exception as error:  # noqa: BLE001 - shown by the test's assertion, not lost in a thread
            results[n] = {"error": repr(error)}

    threads = [threading.Thread(target=call, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_invocations_of_a_function_run_at_the_same_time_in_separate_workers(tmp_path, make_runtime):
    # Given a function whose invocations only succeed when they run at the same time
    runtime = make_runtime(concurrency=2)
    # (its timeout outlasts the patience: on a loaded machine the second worker can take seconds to start)
    runtime.add(function(tmp_path, "meet", {"app.py": MEET}, timeout_s=60))
    (tmp_path / "met").mkdir()
    # When it is invoked twice at once
    results = _meet(runtime, "stack-meet-X", tmp_path / "met", patience=30)
    # Then they ran together (one found the other there), each in its own process, and the log shows it
    assert any(r.get("met") for r in results), results
    assert results[0]["pid"] != results[1]["pid"]
    first, second = runtime.log.after(0)["invocations"]
    assert first["handler_started"] < second["handler_ended"] and second["handler_started"] < first["handler_ended"]
    assert runtime.workers() == {"meet": 2}


def test_reserved_concurrency_of_one_runs_invocations_one_after_the_other(tmp_path, make_runtime):
    # Given the same function with ReservedConcurrentExecutions 1
    runtime = make_runtime(concurrency=4)
    runtime.add(function(tmp_path, "single", {"app.py": MEET}, reserved=1))
    (tmp_path / "single-met").mkdir()
    # When it is invoked twice at once
    results = _meet(runtime, "stack-single-X", tmp_path / "single-met", patience=0.5)
    # Then one waited for the other, in the one worker
    assert {r["met"] for r in results} == {False}
    assert results[0]["pid"] == results[1]["pid"]
    first, second = runtime.log.after(0)["invocations"]
    assert second["handler_started"] >= first["handler_ended"]
    assert runtime.workers() == {"single": 1}


def test_workers_see_the_virtual_clock_of_the_local_cloud(tmp_path, make_runtime):
    # Given the project clock moved three days ahead in this process
    from datetime import timedelta

    from engage import clock

    runtime = make_runtime()
    runtime.add(function(tmp_path, "now", {"app.py": """
        from engage import clock
        def handler(event, context):
            return clock.iso()
        """}))
    clock.reset()
    try:
        before = runtime.invoke("stack-now-X", {}).payload
        clock.advance(timedelta(days=3))
        # When the (now warm) worker is invoked again
        after = runtime.invoke("stack-now-X", {}).payload
        here = clock.now()
    finally:
        clock.reset()
    # Then it reads the same virtual now as this process
    assert clock.parse(after) - clock.parse(before) >= timedelta(days=3)
    assert abs(clock.parse(after) - here) < timedelta(minutes=1)
