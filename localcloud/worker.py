"""One Lambda execution environment: a process that imports one function's handler and runs its invocations.

Started by `localcloud.runtime` as `python -u localcloud/worker.py <fd>` in the function's code folder,
with exactly the function's environment (what CloudFormation resolved, plus what Lambda adds), so
nothing is shared with other functions or with the local cloud's own process. The parent talks to it
over one socket (fd) in length-prefixed JSON messages:

    parent -> worker   {"setup": {function, layers, handler, ...}}          once, first
    worker -> parent   {"init_error": {...}}                                 import failed: then it exits
    parent -> worker   {"invoke": {"event": ..., "request_id", "clock_offset", "timeout_s"}}
    worker -> parent   {"started": t}                                        the handler is being called
    worker -> parent   {"ended": t, "payload": "<json>" | null, "error": {...} | null,
                        "aws_calls": n | null, "aws_seconds": s | null}

Init (the handler module's import) happens once, before the first invocation, like a cold start; the
process then stays warm for the next ones. Times are time.time() (comparable across processes).
The virtual clock's offset comes with every invocation and is applied to `engage.clock` before the
handler runs, so every process sees the local cloud's one virtual now.
A timeout is enforced by the parent, which kills the process (as Lambda ends a timed-out sandbox).
This module imports only the standard library (and botocore, lazily, to count AWS calls; localcloud.faults
only when the local cloud injects faults: ENGAGE_FAULTS).
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from datetime import timedelta
from typing import Any

_HEADER = struct.Struct("!I")


# ---------------------------------------------------------------- framing (both sides use these)
def send_message(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_message(sock: socket.socket) -> dict | None:
    """The next message, or None when the other side has gone (EOF)."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    data = _recv_exact(sock, length)
    if data is None:
        return None
    return json.loads(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- inside the sandbox
class LambdaContext:
    """The context object the Python Lambda runtime passes to handlers."""

    def __init__(self, setup: dict, request_id: str, timeout_s: float):
        self.function_name = setup["name"]
        self.function_version = "$LATEST"
        self.invoked_function_arn = setup["arn"]
        self.memory_limit_in_mb = setup["memory_mb"]
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{setup['name']}"
        self.log_stream_name = setup["log_stream"]
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _AwsCalls:
    """Counts and times every AWS SDK call made in this process during an invocation (boto3 and PynamoDB
    both end in botocore's BaseClient._make_api_call; the handler's own threads count too)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls, self.seconds = 0, 0.0

    def install(self) -> None:
        import botocore.client

        original = botocore.client.BaseClient._make_api_call
        counter = self

        def timed(client, operation_name, api_params):
            started = time.perf_counter()
            try:
                return original(client, operation_name, api_params)
            finally:
                elapsed = time.perf_counter() - started
                with counter.lock:
                    counter.calls += 1
                    counter.seconds += elapsed

        botocore.client.BaseClient._make_api_call = timed

    def take(self) -> tuple[int, float]:
        with self.lock:
            taken = self.calls, self.seconds
            self.calls, self.seconds = 0, 0.0
        return taken


def _error(error: BaseException, error_type: str | None = None, message: str | None = None) -> dict:
    return {"errorMessage": message if message is not None else str(error),
            "errorType": error_type or type(error).__name__,
            "stackTrace": traceback.format_exception(error)}


def _load(setup: dict) -> Any:
    """Import the handler as the Python runtime does: `module.function` from the code folder (sys.path[0])."""
    module_name, _, attr = setup["handler"].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise _InitError(_error(error, "Runtime.ImportModuleError",
                                f"Unable to import module '{module_name}': {error}")) from error
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise _InitError({"errorMessage": f"Handler '{attr}' missing on module '{module_name}'",
                          "errorType": "Runtime.HandlerNotFound", "stackTrace": []})
    return handler


class _InitError(Exception):
    def __init__(self, payload: dict):
        super().__init__(payload["errorMessage"])
        self.payload = payload


def _set_clock(offset_seconds: float) -> None:
    """The local cloud's virtual now: engage.clock reads its offset from this module global."""
    clock = sys.modules.get("engage.clock")
    if clock is not None:
        clock._offset = timedelta(seconds=offset_seconds)


def main(fd: int) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the local cloud stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    first = recv_message(sock)
    if not first or "setup" not in first:
        return 2
    setup = first["setup"]
    # Lambda's order: the function's code first (in place of this script's folder), then its layers.
    sys.path[0] = setup["code_dir"]
    sys.path.extend(p for p in setup["layers"] if p not in sys.path)
    counter = _AwsCalls() if setup.get("count_aws_calls") else None
    try:
        if counter is not None:
            counter.install()
        if os.environ.get("ENGAGE_FAULTS"):  # only when the local cloud was started with a fault config
            from localcloud import faults

            faults.install()
        try:
            import engage.clock  # noqa: F401 - imported before the handler so the first call has virtual now
        except ImportError:
            pass
        handler = _load(setup)
    except _InitError as error:
        send_message(sock, {"init_error": error.payload})
        return 1
    except Exception as error:  # noqa: BLE001 - anything the import raised is the function's init error
        send_message(sock, {"init_error": _error(error, "Runtime.Unknown")})
        return 1
    while True:
        message = recv_message(sock)
        if message is None:
            return 0  # the local cloud closed the socket (stopped, or this worker was retired)
        request = message["invoke"]
        _set_clock(request.get("clock_offset", 0.0))
        context = LambdaContext(setup, request["request_id"], request["timeout_s"])
        if counter is not None:
            counter.take()
        reply: dict[str, Any] = {"payload": None, "error": None}
        send_message(sock, {"started": time.time()})
        try:
            result = handler(request["event"], context)
            try:
                reply["payload"] = json.dumps(result)  # Lambda serializes the result: fail here like it would
            except (TypeError, ValueError) as error:
                reply["error"] = {"errorMessage": f"Unable to marshal response: {error}",
                                  "errorType": "Runtime.MarshalError", "stackTrace": []}
        except Exception as error:  # noqa: BLE001 - any handler error becomes a Lambda function error
            reply["error"] = _error(error)
        reply["ended"] = time.time()
        if counter is not None:
            calls, seconds = counter.take()
            reply["aws_calls"], reply["aws_seconds"] = calls, seconds
        else:
            reply["aws_calls"] = reply["aws_seconds"] = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        send_message(sock, reply)


def new_log_stream() -> str:
    return f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
