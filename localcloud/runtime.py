"""In-process Lambda runtime: the deployed functions' own code, configuration and context.

Each function's handler module is imported from its CodeUri folder under a unique module
name (two functions may both have an `app.py`), with its layers importable. An invocation
runs with exactly the environment the deployed function has (read back from the moto
Lambda API, so CloudFormation resolved every Ref), plus what the Lambda runtime adds
(AWS_LAMBDA_FUNCTION_NAME, AWS_ENDPOINT_URL pointing at the local AWS endpoint...).

The environment is process-global, so invocations are serialized by one lock: the same
code then sees the same settings it would see in its own sandbox. A consequence: a
handler must not synchronously invoke another local function and wait for it
(asynchronous invokes, Step Functions executions and stream triggers are fine).

Every invocation is also written to `Runtime.log` (an `InvocationLog`: the last
LOG_LIMIT invocations, served as GET /_local/invocations) with real-time timestamps of
each step: queued for the runtime lock, sandbox entered, handler started and ended, lock
released, plus the HTTP request or the stream/queue records it carried and, once
`time_aws_calls()` is installed, the AWS calls it made and their time. That is how
`bench/` tells the local cloud's own overhead apart from the handlers' time.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("localcloud.runtime")
LOG_LIMIT = 10_000  # invocations kept in Runtime.log (oldest dropped first)
LOG_PAGE_LIMIT = 5_000  # invocations per GET /_local/invocations page
LOG_MAX_WAIT = 20.0  # seconds a GET /_local/invocations may wait for new invocations
_thread = threading.local()  # .aws: [calls, seconds] of the invocation running on this thread
_aws_timed = False


@dataclass
class FunctionSpec:
    """One deployed function, as the local Lambda service knows it."""

    logical_id: str
    name: str  # physical name given by CloudFormation
    arn: str
    handler: str  # "module.function"
    code_dir: Path
    layer_dirs: list[Path]
    environment: dict[str, str]
    memory_mb: int = 128
    timeout_s: int = 3


class LambdaContext:
    """The context object the Python Lambda runtime passes to handlers."""

    def __init__(self, spec: FunctionSpec, request_id: str | None = None):
        self.function_name = spec.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = spec.arn
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{spec.name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + spec.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """Outcome of one invocation, the way the Lambda Invoke API reports it."""

    payload: Any = None
    error: dict | None = None  # {"errorMessage", "errorType", "stackTrace"} when the handler raised
    request_id: str = ""
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def payload_bytes(self) -> bytes:
        return json.dumps(self.error if self.error else self.payload).encode()


@dataclass
class _Loaded:
    module: ModuleType
    handler: Callable[[Any, Any], Any]
    stamp: tuple[int, int]


class Runtime:
    """Holds the functions and invokes them one at a time (see module doc)."""

    def __init__(self, base_env: dict[str, str]):
        self.base_env = base_env  # what the Lambda runtime itself adds (region, endpoint, credentials)
        self.functions: dict[str, FunctionSpec] = {}  # by physical name
        self._loaded: dict[str, _Loaded] = {}
        self._private: dict[str, dict[str, ModuleType]] = {}
        self._lock = threading.RLock()
        self._async_threads: list[threading.Thread] = []
        self.invocations = 0
        self.listeners: list[Callable[[FunctionSpec, Any, Invocation], None]] = []
        self.log = InvocationLog()

    def add(self, spec: FunctionSpec) -> None:
        self.functions[spec.name] = spec

    def by_logical_id(self, logical_id: str) -> FunctionSpec:
        for spec in self.functions.values():
            if spec.logical_id == logical_id:
                return spec
        raise KeyError(f"no function {logical_id!r} in the template")

    def resolve(self, name_or_arn: str) -> FunctionSpec:
        """Accept a name, an ARN or a partial ARN, with or without a qualifier."""
        if name_or_arn.startswith("arn:"):
            parts = name_or_arn.split(":")
            name_or_arn = parts[6]
        name = name_or_arn.split(":")[0]
        if name not in self.functions:
            raise KeyError(f"function {name!r} is not deployed")
        return self.functions[name]

    # ------------------------------------------------------------ invoking
    def invoke(self, name_or_arn: str, event: Any, request_id: str | None = None,
               origin: dict | None = None) -> Invocation:
        """Run the handler with `event`; `origin` says what the caller knows of where the event came from,
        for the invocation log: {"received": t} (HTTP API: request received) or {"read": [t, ...]}
        (pollers: when each record was read from its source), times from time.time()."""
        spec = self.resolve(name_or_arn)
        timing = {"queued": time.time()}
        with self._lock:
            timing["started"] = time.time()
            context = LambdaContext(spec, request_id)
            saved = dict(os.environ)
            started = time.perf_counter()
            result = Invocation(request_id=context.aws_request_id)
            aws = [0, 0.0]
            outer, _thread.aws = getattr(_thread, "aws", None), aws
            try:
                self._enter(spec)
                with self._code_on_path(spec):
                    loaded = self._load(spec)
                    timing["handler_started"] = time.time()
                    try:
                        result.payload = loaded.handler(event, context)
                    finally:
                        timing["handler_ended"] = time.time()
                try:
                    json.dumps(result.payload)  # Lambda serializes the result: fail here like it would
                except (TypeError, ValueError) as error:
                    result.payload = None
                    result.error = {"errorMessage": f"Unable to marshal response: {error}",
                                    "errorType": "Runtime.MarshalError"}
            except Exception as error:  # noqa: BLE001 - any handler error becomes a Lambda function error
                result.error = {"errorMessage": str(error), "errorType": type(error).__name__,
                                "stackTrace": traceback.format_exception(error)}
                log.warning("%s failed: %s: %s", spec.logical_id, type(error).__name__, error)
            finally:
                _thread.aws = outer
                result.duration_ms = (time.perf_counter() - started) * 1000
                _restore_environ(saved)
                self._settings_changed()
                self.invocations += 1
                timing["ended"] = time.time()
            log.info("REPORT %s RequestId: %s Duration: %.2f ms%s", spec.logical_id, result.request_id,
                     result.duration_ms, f" Error: {result.error['errorType']}" if result.error else "")
            if result.duration_ms > spec.timeout_s * 1000:
                # A thread cannot be killed mid-call: report the timeout Lambda would have raised.
                result.error = {"errorMessage": f"Task timed out after {spec.timeout_s:.2f} seconds",
                                "errorType": "Sandbox.Timedout"}
        self.log.append(log_entry(spec, event, result, timing, aws if _aws_timed else None, origin or {}))
        for listener in self.listeners:
            listener(spec, event, result)
        return result

    def invoke_async(self, name_or_arn: str, event: Any) -> str:
        """InvocationType=Event: queue and return at once, as Lambda does."""
        request_id = str(uuid.uuid4())
        thread = threading.Thread(target=self.invoke, args=(name_or_arn, event, request_id),
                                  name=f"lambda-async-{request_id[:8]}", daemon=True)
        self._async_threads = [t for t in self._async_threads if t.is_alive()] + [thread]
        thread.start()
        return request_id

    def run_as(self, spec: FunctionSpec, action: Callable[[], Any]) -> Any:
        """Run `action` in `spec`'s environment, as if inside its sandbox (setup tasks like seeding)."""
        with self._lock:
            saved = dict(os.environ)
            try:
                self._enter(spec)
                return action()
            finally:
                _restore_environ(saved)
                self._settings_changed()

    def busy(self) -> bool:
        return any(t.is_alive() for t in self._async_threads)

    def wait_async(self, timeout: float) -> None:
        for thread in list(self._async_threads):
            thread.join(timeout)

    # ------------------------------------------------------------ sandbox
    def _enter(self, spec: FunctionSpec) -> None:
        for path in spec.layer_dirs:
            if str(path) not in sys.path:
                sys.path.append(str(path))
        os.environ.update(self.base_env)
        os.environ.update(spec.environment)
        os.environ.update({
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
        })
        self._settings_changed()

    @staticmethod
    def _settings_changed() -> None:
        # engage caches settings read from the environment: drop the cache whenever it changes.
        config = sys.modules.get("engage.config")
        if config is not None:
            config.settings.cache_clear()

    @contextmanager
    def _code_on_path(self, spec: FunctionSpec):
        """The function's folder first on sys.path, and its own sibling modules importable, during a call.

        Sibling modules (anything imported from the folder) are taken out of sys.modules afterwards,
        so another function's same-named module (`app`, `models`...) can never collide with them.
        """
        private = self._private.setdefault(spec.name, {})
        before = set(sys.modules)
        sys.path.insert(0, str(spec.code_dir))
        sys.modules.update(private)
        try:
            yield
        finally:
            sys.path.remove(str(spec.code_dir))
            prefix = str(spec.code_dir) + os.sep
            for name in set(sys.modules) - before:
                file = getattr(sys.modules[name], "__file__", None) or ""
                if file.startswith(prefix):
                    private[name] = sys.modules.pop(name)

    def _load(self, spec: FunctionSpec) -> _Loaded:
        stamp = _stamp(spec.code_dir)
        loaded = self._loaded.get(spec.name)
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        if loaded is not None:
            # The function's folder changed while running (`make dev`): the next call is a cold start.
            log.info("%s: code changed, loading it again", spec.logical_id)
            private = self._private.get(spec.name, {})
            for name in private:
                sys.modules.pop(name, None)
            private.clear()
        module_name, _, attr = spec.handler.rpartition(".")
        path = spec.code_dir / (module_name.replace(".", "/") + ".py")
        if not path.exists():
            raise ImportError(f"{spec.logical_id}: handler module {path} not found (Handler: {spec.handler})")
        unique = f"_localcloud_fn_{spec.logical_id}_{module_name.replace('.', '_')}"
        module_spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # a failed import is retried on the next call, like a cold start
        handler = getattr(module, attr, None)
        if not callable(handler):
            raise TypeError(f"{spec.logical_id}: {path} has no callable {attr!r} (Handler: {spec.handler})")
        loaded = _Loaded(module, handler, stamp)
        self._loaded[spec.name] = loaded
        return loaded


class InvocationLog:
    """The last LOG_LIMIT invocations, numbered from 1 (`seq`), for GET /_local/invocations."""

    def __init__(self, limit: int = LOG_LIMIT):
        self._entries: deque[dict] = deque(maxlen=limit)
        self._changed = threading.Condition()
        self.last = 0  # seq of the newest entry

    def append(self, entry: dict) -> None:
        with self._changed:
            self.last += 1
            entry["seq"] = self.last
            self._entries.append(entry)
            self._changed.notify_all()

    def after(self, seq: int, limit: int = LOG_PAGE_LIMIT, wait: float = 0.0) -> dict:
        """Entries newer than `seq` (oldest first, at most `limit`), waiting up to `wait` seconds for one.

        `next` is the seq to ask after next time; `missed` counts entries already dropped
        from the log (asked for too late), so a reader knows its view has a hole.
        """
        if seq < 0 or limit < 1 or not 0 <= wait <= LOG_MAX_WAIT:
            raise ValueError(f"after >= 0, limit >= 1 and 0 <= wait <= {LOG_MAX_WAIT:g} (seconds)")
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self.last > seq, wait)
            oldest = self._entries[0]["seq"] if self._entries else self.last + 1
            skip = max(0, seq + 1 - oldest)
            entries = list(itertools.islice(self._entries, skip, skip + min(limit, LOG_PAGE_LIMIT)))
        return {"invocations": entries, "next": entries[-1]["seq"] if entries else max(seq, oldest - 1),
                "missed": max(0, oldest - seq - 1)}


def log_entry(spec: FunctionSpec, event: Any, result: Invocation, timing: dict[str, float],
              aws: list | None, origin: dict) -> dict:
    """One invocation as the log keeps it: who, when (time.time() seconds), what it carried."""
    entry: dict[str, Any] = {
        "function": spec.logical_id, "request_id": result.request_id, "trigger": "direct",
        "queued": timing["queued"], "started": timing["started"],
        "handler_started": timing.get("handler_started"), "handler_ended": timing.get("handler_ended"),
        "ended": timing["ended"], "error": (result.error or {}).get("errorType"),
        "aws_calls": aws[0] if aws else None, "aws_seconds": round(aws[1], 6) if aws else None,
    }
    if isinstance(event, dict) and event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
        entry["trigger"] = "http"
        entry["http"] = {"route": event.get("routeKey"), "request_id": event["requestContext"].get("requestId"),
                         "received": origin.get("received")}
    elif isinstance(event, dict) and isinstance(event.get("Records"), list):
        records = event["Records"]
        read: Sequence = origin.get("read") or [None] * len(records)
        entry["records"] = [_record_summary(r, t) for r, t in zip(records, read, strict=False) if isinstance(r, dict)]
        sources = {r.get("eventSource") for r in records if isinstance(r, dict)}
        entry["trigger"] = "stream" if sources <= {"aws:dynamodb", "aws:kinesis"} else "queue"
    return entry


def _record_summary(record: dict, read: float | None) -> dict:
    """Which record it was and when it entered its source (DynamoDB keys flattened to strings)."""
    if "dynamodb" in record:
        change = record["dynamodb"] if isinstance(record["dynamodb"], dict) else {}
        keys = {name: next(iter(value.values())) if isinstance(value, dict) and len(value) == 1 else str(value)
                for name, value in (change.get("Keys") or {}).items()}
        created = change.get("ApproximateCreationDateTime")
        return {"source": record.get("eventSourceARN"), "id": record.get("eventID"), "keys": keys,
                "created": float(created) if isinstance(created, int | float) else None, "read": read}
    sent = (record.get("attributes") or {}).get("SentTimestamp")
    return {"source": record.get("eventSourceARN"), "id": record.get("messageId"), "keys": {},
            "created": int(sent) / 1000 if str(sent or "").isdigit() else None, "read": read}


def time_aws_calls() -> None:
    """Count and time the AWS SDK calls each invocation makes (on its own thread) for the log.

    Patches botocore's BaseClient._make_api_call, where boto3 and PynamoDB calls both end,
    once per process; calls made outside an invocation pass straight through.
    """
    global _aws_timed
    if _aws_timed:
        return
    import botocore.client

    original = botocore.client.BaseClient._make_api_call

    def timed(client, operation_name, api_params):
        counter = getattr(_thread, "aws", None)
        if counter is None:
            return original(client, operation_name, api_params)
        started = time.perf_counter()
        try:
            return original(client, operation_name, api_params)
        finally:
            counter[0] += 1
            counter[1] += time.perf_counter() - started

    botocore.client.BaseClient._make_api_call = timed
    _aws_timed = True


def _restore_environ(saved: dict[str, str]) -> None:
    """Put the process environment back key by key: never a moment with it empty (moto's threads read it)."""
    for name in [n for n in os.environ if n not in saved]:
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _stamp(folder: Path) -> tuple[int, int]:
    """Newest modification time and count of the folder's Python files: changes when code is edited."""
    newest, count = 0, 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                count += 1
    return newest, count
