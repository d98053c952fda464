"""The local Lambda service: every function runs in its own worker processes, concurrently, as on Lambda.

Each worker (`localcloud/worker.py`) is one execution environment: a process started in the function's
code folder with exactly the environment the deployed function has (read back from the moto Lambda
API, so CloudFormation resolved every Ref) plus what the Lambda runtime adds (AWS_LAMBDA_FUNCTION_NAME,
AWS_ENDPOINT_URL pointing at the local AWS endpoint...). It imports the handler once (a cold start)
and then serves invocations one at a time, warm, for as long as the local cloud runs. Every worker
of every function calls the one local AWS endpoint (moto, in the local cloud's process).

Each function has its own pool of workers, up to its concurrency: ReservedConcurrentExecutions when
the template sets it, else the runtime's default (`--concurrency`, ENGAGE_LAMBDA_CONCURRENCY, 4). An
invocation takes an idle warm worker (the most recently used), else starts a new one while the pool
has room, else waits for one to come free (Lambda would throttle; here the caller waits). So an HTTP
request never waits for a stream batch or a backfill of another function, and one function's
invocations run side by side.

A worker is retired (and the next invocation starts cold) when the function's code or its layers
change on disk (`make dev`), when its handler times out (the process is killed, as Lambda ends the
sandbox), when it crashes, or when its import failed. The virtual clock's offset travels with every
invocation, so every worker sees the local cloud's one virtual now (`engage.clock`).

Every invocation is also written to `Runtime.log` (an `InvocationLog`: the last LOG_LIMIT
invocations, served as GET /_local/invocations) with real-time timestamps of each step: queued,
worker assigned, handler started and ended (in the worker), worker released, whether it started a
new worker (cold), plus the HTTP request or the stream/queue records it carried and, once
`time_aws_calls()` is on, the AWS calls the worker made during it and their time. That is how
`bench/` tells the local cloud's own overhead apart from the handlers' time.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localcloud.worker import recv_message, send_message

log = logging.getLogger("localcloud.runtime")
LOG_LIMIT = 10_000  # invocations kept in Runtime.log (oldest dropped first)
LOG_PAGE_LIMIT = 5_000  # invocations per GET /_local/invocations page
LOG_MAX_WAIT = 20.0  # seconds a GET /_local/invocations may wait for new invocations
DEFAULT_CONCURRENCY = 4  # workers per function unless ReservedConcurrentExecutions or --concurrency say
INIT_TIMEOUT = 60.0  # seconds a worker may take to import its handler and start a call (a loaded machine)
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
# What a worker inherits from the host besides the function's own environment (the interpreter needs them).
HOST_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
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
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions, when the template sets it


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


class Throttled(Exception):
    """The function may not run at all (ReservedConcurrentExecutions 0)."""


class _Worker:
    """The local cloud's side of one worker process (localcloud/worker.py)."""

    def __init__(self, spec: FunctionSpec, stamp: tuple, env: dict[str, str], count_aws_calls: bool):
        from localcloud.worker import new_log_stream

        self.spec, self.stamp = spec, stamp
        self.healthy = True  # False once it died, timed out or failed its import: never reused
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-u", str(WORKER_SCRIPT), str(theirs.fileno())], cwd=spec.code_dir, env=env,
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=2)  # function logs are the console's (CloudWatch's), never a caller's stdout
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        send_message(ours, {"setup": {
            "name": spec.name, "arn": spec.arn, "handler": spec.handler, "code_dir": str(spec.code_dir),
            "layers": [str(p) for p in spec.layer_dirs], "memory_mb": spec.memory_mb,
            "log_stream": new_log_stream(), "count_aws_calls": count_aws_calls}})

    @property
    def pid(self) -> int:
        return self.process.pid

    def invoke(self, event: Any, request_id: str, clock_offset: float) -> dict:
        """Run one invocation; the worker's reply (see worker.py), or a Lambda error when it could not answer."""
        try:
            send_message(self.sock, {"invoke": {"event": event, "request_id": request_id,
                                                "clock_offset": clock_offset, "timeout_s": self.spec.timeout_s}})
            first = self._receive(INIT_TIMEOUT)
            if first is None:
                return self._died(request_id)
            if "init_error" in first:
                self.close()
                return {"error": first["init_error"]}
            reply = self._receive(self.spec.timeout_s)
            if reply is None:
                return self._died(request_id)
            reply["handler_started"] = first["started"]
            return reply
        except TimeoutError:
            self.close()
            return {"error": {"errorMessage": f"{_iso_now()} {request_id} Task timed out after "
                                              f"{self.spec.timeout_s:.2f} seconds",
                              "errorType": "Sandbox.Timedout"}}
        except OSError:  # the socket broke: the process is gone
            return self._died(request_id)

    def _receive(self, timeout: float) -> dict | None:
        self.sock.settimeout(timeout)
        try:
            return recv_message(self.sock)
        except TimeoutError:
            raise
        except ConnectionError:
            return None

    def _died(self, request_id: str) -> dict:
        self.close()
        code = self.process.returncode
        how = f"signal: {-code}" if code is not None and code < 0 else f"exit status {code}"
        return {"error": {"errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {how}",
                          "errorType": "Runtime.ExitError"}}

    def close(self) -> None:
        """End the process (killed if it is still running, as Lambda ends a sandbox) and reap it."""
        self.healthy = False
        try:
            self.sock.close()
        except OSError:
            pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("worker %s of %s did not end", self.pid, self.spec.logical_id)


class _Pool:
    """One function's workers: idle ones (most recently used last) and how many exist or are starting."""

    def __init__(self, size: int):
        self.size = size
        self.idle: list[_Worker] = []
        self.slots = 0  # workers alive or being started, busy or idle
        self.changed = threading.Condition()
        self.stopped = False

    def acquire(self, stamp: tuple) -> _Worker | None:
        """A warm worker running this code, or None: the caller starts one (its slot is reserved)."""
        if self.size < 1:
            raise Throttled()
        stale: list[_Worker] = []
        try:
            with self.changed:
                while True:
                    if self.stopped:
                        raise RuntimeError("the local Lambda runtime is stopped")
                    while self.idle:
                        worker = self.idle.pop()
                        if worker.stamp == stamp and worker.healthy and worker.process.poll() is None:
                            return worker
                        stale.append(worker)
                        self.slots -= 1
                    if self.slots < self.size:
                        self.slots += 1
                        return None
                    self.changed.wait()
        finally:
            for worker in stale:  # code changed (or the process ended): the next call starts cold
                worker.close()

    def release(self, worker: _Worker | None) -> None:
        with self.changed:
            if worker is not None and worker.healthy and not self.stopped:
                self.idle.append(worker)
            else:
                self.slots -= 1
            self.changed.notify()

    def stop(self) -> list[_Worker]:
        with self.changed:
            self.stopped = True
            idle, self.idle = self.idle, []
            self.changed.notify_all()
        return idle


class Runtime:
    """Holds the functions and runs their invocations in worker processes (see module doc)."""

    def __init__(self, base_env: dict[str, str], concurrency: int | None = None):
        self.base_env = base_env  # what the Lambda runtime itself adds (region, endpoint, credentials)
        self.concurrency = concurrency or int(os.environ.get("ENGAGE_LAMBDA_CONCURRENCY") or DEFAULT_CONCURRENCY)
        if self.concurrency < 1:
            raise ValueError("the concurrency (workers per function) is at least 1")
        self.functions: dict[str, FunctionSpec] = {}  # by physical name
        self._pools: dict[str, _Pool] = {}
        self._busy: set[_Worker] = set()
        self._busy_lock = threading.Lock()
        self._env_lock = threading.RLock()  # run_as sets this process's environment
        self._async_threads: list[threading.Thread] = []
        self._count_lock = threading.Lock()
        self.invocations = 0
        self.listeners: list[Callable[[FunctionSpec, Any, Invocation], None]] = []
        # Fault injection (localcloud/faults.py): the JSON config handed to the chosen functions' workers.
        self.faults: str | None = None
        self.fault_functions: tuple[str, ...] = ()
        self._workers_started = itertools.count()
        self.log = InvocationLog()

    def add(self, spec: FunctionSpec) -> None:
        self.functions[spec.name] = spec
        size = self.concurrency if spec.reserved_concurrency is None else spec.reserved_concurrency
        self._pools[spec.name] = _Pool(size)

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

    def workers(self) -> dict[str, int]:
        """Worker processes per function (logical id), busy or idle."""
        return {spec.logical_id: self._pools[name].slots for name, spec in self.functions.items()}

    # ------------------------------------------------------------ invoking
    def invoke(self, name_or_arn: str, event: Any, request_id: str | None = None,
               origin: dict | None = None) -> Invocation:
        """Run the handler with `event` in one of the function's workers; `origin` says what the caller
        knows of where the event came from, for the invocation log: {"received": t} (HTTP API: request
        received) or {"read": [t, ...]} (pollers: when each record was read from its source), times from
        time.time()."""
        spec = self.resolve(name_or_arn)
        pool = self._pools[spec.name]
        timing = {"queued": time.time()}
        result = Invocation(request_id=request_id or str(uuid.uuid4()))
        reply: dict = {}
        worker, cold, acquired = None, False, False
        stamp = _stamp(spec)
        try:
            worker = pool.acquire(stamp)
            acquired = True
            timing["started"] = time.time()
            if worker is None:
                cold = True
                worker = _Worker(spec, stamp, self._worker_environment(spec), _aws_timed)
            with self._busy_lock:
                self._busy.add(worker)
            reply = worker.invoke(event, result.request_id, _clock_offset())
        except Throttled:
            reply = {"error": {"errorMessage": "Rate Exceeded.", "errorType": "TooManyRequestsException"}}
        except OSError as error:  # the worker process could not be started
            reply = {"error": {"errorMessage": f"could not start a worker: {error}", "errorType": "Runtime.Unknown"}}
        finally:
            if worker is not None:
                with self._busy_lock:
                    self._busy.discard(worker)
            if acquired:
                pool.release(worker)
        timing.setdefault("started", time.time())
        timing["ended"] = time.time()
        result.error = reply.get("error")
        if reply.get("payload") is not None and result.error is None:
            result.payload = json.loads(reply["payload"])
        if reply.get("handler_started") is not None:
            timing["handler_started"] = reply["handler_started"]
            timing["handler_ended"] = reply.get("ended") or timing["ended"]
            result.duration_ms = (timing["handler_ended"] - timing["handler_started"]) * 1000
        with self._count_lock:
            self.invocations += 1
        if result.error:
            log.warning("%s failed: %s: %s", spec.logical_id, result.error.get("errorType"),
                        result.error.get("errorMessage"))
        log.info("REPORT %s RequestId: %s Duration: %.2f ms%s", spec.logical_id, result.request_id,
                 result.duration_ms, f" Error: {result.error['errorType']}" if result.error else "")
        aws = [reply["aws_calls"], reply["aws_seconds"]] if reply.get("aws_calls") is not None else None
        entry = log_entry(spec, event, result, timing, aws, origin or {})
        entry["cold"], entry["worker"] = cold, worker.pid if worker is not None else None
        self.log.append(entry)
        for listener in self.listeners:
            listener(spec, event, result)
        return result

    def invoke_async(self, name_or_arn: str, event: Any) -> str:
        """InvocationType=Event: queue and return at once, as Lambda does."""
        self.resolve(name_or_arn)
        request_id = str(uuid.uuid4())
        thread = threading.Thread(target=self.invoke, args=(name_or_arn, event, request_id),
                                  name=f"lambda-async-{request_id[:8]}", daemon=True)
        self._async_threads = [t for t in self._async_threads if t.is_alive()] + [thread]
        thread.start()
        return request_id

    def busy(self) -> bool:
        return any(t.is_alive() for t in self._async_threads)

    def wait_async(self, timeout: float) -> None:
        for thread in list(self._async_threads):
            thread.join(timeout)

    def stop(self) -> None:
        """End every worker: idle ones at once, busy ones killed (their callers get Runtime.ExitError)."""
        workers = [w for pool in self._pools.values() for w in pool.stop()]
        with self._busy_lock:
            workers += list(self._busy)
        for worker in workers:
            worker.close()

    # ------------------------------------------------------------ sandbox
    def _environment(self, spec: FunctionSpec) -> dict[str, str]:
        """A worker's whole environment: the function's, plus what Lambda sets (nothing else of this process)."""
        env = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
        env.update(self.base_env)
        env.update(spec.environment)
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
            "TZ": ":UTC",
        })
        return env

    def inject_faults(self, config_json: str, functions: Sequence[str]) -> None:
        """Workers of `functions` (logical ids) started from now on inject faults (localcloud/faults.py)."""
        self.faults, self.fault_functions = config_json, tuple(functions)

    def _worker_environment(self, spec: FunctionSpec) -> dict[str, str]:
        env = self._environment(spec)
        if self.faults and spec.logical_id in self.fault_functions:
            env["ENGAGE_FAULTS"] = self.faults
            env["ENGAGE_FAULTS_FUNCTION"] = spec.logical_id
            env["ENGAGE_FAULTS_WORKER"] = str(next(self._workers_started))
        return env

    def run_as(self, spec: FunctionSpec, action: Callable[[], Any]) -> Any:
        """Run `action` in this process with `spec`'s environment, as if inside its sandbox (setup tasks
        like seeding the space; nothing else in this process reads the environment meanwhile)."""
        with self._env_lock:
            saved = dict(os.environ)
            try:
                for path in spec.layer_dirs:
                    if str(path) not in sys.path:
                        sys.path.append(str(path))
                os.environ.update(self.base_env)
                os.environ.update(spec.environment)
                os.environ["AWS_LAMBDA_FUNCTION_NAME"] = spec.name
                _settings_changed()
                return action()
            finally:
                _restore_environ(saved)
                _settings_changed()


def _settings_changed() -> None:
    # engage caches settings read from the environment: drop the cache whenever it changes.
    config = sys.modules.get("engage.config")
    if config is not None:
        config.settings.cache_clear()


def _clock_offset() -> float:
    """The virtual clock's offset from real time, in seconds (engage.clock keeps it for this process)."""
    clock = sys.modules.get("engage.clock")
    return clock._offset.total_seconds() if clock is not None else 0.0


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
    """Count and time the AWS SDK calls of each invocation for the log (workers started from now on).

    Each worker wraps botocore's BaseClient._make_api_call, where boto3 and PynamoDB calls both end,
    and reports the calls made in its process during each invocation (the handler's threads included).
    """
    global _aws_timed
    _aws_timed = True


def _restore_environ(saved: dict[str, str]) -> None:
    """Put the process environment back key by key: never a moment with it empty (moto's threads read it)."""
    for name in [n for n in os.environ if n not in saved]:
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _stamp(spec: FunctionSpec) -> tuple[int, int]:
    """Newest modification time and count of the Python files of the function's code and its layers:
    changes when code is edited, and then new workers load it."""
    newest, count = 0, 0
    for folder in (spec.code_dir, *spec.layer_dirs):
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                    count += 1
    return newest, count
