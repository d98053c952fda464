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
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("localcloud.runtime")


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
    def invoke(self, name_or_arn: str, event: Any, request_id: str | None = None) -> Invocation:
        spec = self.resolve(name_or_arn)
        with self._lock:
            context = LambdaContext(spec, request_id)
            saved = dict(os.environ)
            started = time.perf_counter()
            result = Invocation(request_id=context.aws_request_id)
            try:
                self._enter(spec)
                with self._code_on_path(spec):
                    loaded = self._load(spec)
                    result.payload = loaded.handler(event, context)
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
                result.duration_ms = (time.perf_counter() - started) * 1000
                _restore_environ(saved)
                self._settings_changed()
                self.invocations += 1
            log.info("REPORT %s RequestId: %s Duration: %.2f ms%s", spec.logical_id, result.request_id,
                     result.duration_ms, f" Error: {result.error['errorType']}" if result.error else "")
            if result.duration_ms > spec.timeout_s * 1000:
                # A thread cannot be killed mid-call: report the timeout Lambda would have raised.
                result.error = {"errorMessage": f"Task timed out after {spec.timeout_s:.2f} seconds",
                                "errorType": "Sandbox.Timedout"}
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
