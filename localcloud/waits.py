"""Step Functions executions that follow the virtual clock.

moto's ASL interpreter (ported from LocalStack) sleeps a `Wait` state in real time
(`env.program_state_event.wait(seconds)`) and measures `Timestamp` waits against the
system clock. Here a Wait computes its end on the virtual clock (`engage.clock`), registers
`clock.call_at(end)` and blocks until that timer fires: `POST /_local/clock {"advance":
"P3D"}` releases a 3-day wait at once, and with real time passing (`make dev`) the clock's
ticker releases it when its moment comes, as on AWS. Stopping the execution still
interrupts the wait.

Executions parked on the clock (or on a task token) are quiet: `settle(executions=True)`
does not wait for them, and threads moto spawns for Map/Parallel iterations count as quiet
when all their live children are. To know the children, the interpreter's thread list
(`TMP_THREADS`) is replaced by one that records which thread started which.
"""
from __future__ import annotations

import threading
import time
from datetime import UTC, timedelta

from engage import clock as engage_clock

# Threads blocked on the virtual clock or on a task token: an execution there is waiting, not working.
_parked: set[threading.Thread] = set()
_parked_lock = threading.Lock()
_installed = False


class _ThreadList(list):
    """moto's TMP_THREADS, remembering each thread's parent (append runs in the parent, before start)."""

    def __init__(self, items=()):
        super().__init__(items)
        self.parent: dict[threading.Thread, threading.Thread] = {}

    def append(self, thread) -> None:
        self.parent[thread] = threading.current_thread()
        super().append(thread)


def _threads() -> _ThreadList:
    from moto.stepfunctions.parser import utils

    return utils.TMP_THREADS


class _Parked:
    def __enter__(self):
        with _parked_lock:
            _parked.add(threading.current_thread())

    def __exit__(self, *_):
        with _parked_lock:
            _parked.discard(threading.current_thread())


def quiet(thread: threading.Thread) -> bool:
    """Finished, parked on the clock/a token, or only waiting for children that are all quiet."""
    if not thread.is_alive():
        return True
    with _parked_lock:
        if thread in _parked:
            return True
    threads = _threads()
    children = [t for t, parent in list(threads.parent.items()) if parent is thread and t.is_alive()]
    return bool(children) and all(quiet(child) for child in children)


def join_executions(deadline: float, timeout: float) -> None:
    """Wait until every execution thread has ended or is parked (settle's `executions`)."""
    while True:
        threads = [t for t in list(_threads()) if t.is_alive()]
        if all(quiet(t) for t in threads):
            # Forget finished threads, so the list does not grow for the life of the process.
            live = _threads()
            for thread in [t for t in live if not t.is_alive()]:
                live.remove(thread)
                live.parent.pop(thread, None)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"a Step Functions execution still runs after {timeout}s")
        busy = next(t for t in threads if not quiet(t))
        busy.join(0.05)  # ends, or parks (a Wait has no way to wake this join)


def install(local) -> None:
    """Extension: Wait states on the virtual clock, and a settle that knows parked executions."""
    global _installed
    from moto.stepfunctions.parser import utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as callback_module,
    )
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function import timestamp, wait_function

    vclock = local.clock
    _Hooks.clock = vclock
    if _installed:
        return

    # Every module that appends to TMP_THREADS bound the list at import: rebind them all to one tracking list.
    original = utils.TMP_THREADS
    tracking = _ThreadList(original)
    import sys

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "") or ""
        if name.startswith("moto.stepfunctions.parser") and getattr(module, "TMP_THREADS", None) is original:
            module.TMP_THREADS = tracking
    utils.TMP_THREADS = tracking

    def wait_interval(self, env, wait_seconds) -> None:
        if wait_seconds <= 0:
            return
        end = engage_clock.now() + timedelta(seconds=wait_seconds)
        released = threading.Event()
        me = threading.current_thread()

        def release(_moment) -> None:
            # Unpark before waking: the settle that follows this timer must wait for the continuation.
            with _parked_lock:
                _parked.discard(me)
            released.set()

        timer = _Hooks.clock.call_at(end, release, f"Step Functions Wait until {engage_clock.iso(end)}")
        with _Parked():
            # Short polls so a StopExecution (env no longer running) interrupts the wait too.
            while env.is_running() and not released.wait(0.25):
                pass
        timer.cancel()

    def timestamp_seconds(self, env) -> int:
        self.string.eval(env=env)
        text = env.stack.pop()
        moment = self._from_timestamp_string(timestamp=text)
        if moment is None:
            from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
                FailureEventException,
            )

            raise FailureEventException(self._create_failure_event(env, text))
        # Compared to virtual now; sub-second precision is dropped as moto (and AWS) do.
        return int((moment.replace(tzinfo=UTC) - engage_clock.now()).total_seconds())

    wait_function.WaitFunction._wait_interval = wait_interval
    timestamp.Timestamp._get_wait_seconds = timestamp_seconds

    original_token_wait = callback_module.StateTaskServiceCallback._eval_wait_for_task_token

    def wait_for_task_token(self, *args, **kwargs):
        with _Parked():
            return original_token_wait(self, *args, **kwargs)

    callback_module.StateTaskServiceCallback._eval_wait_for_task_token = wait_for_task_token
    _installed = True


class _Hooks:
    clock = None  # the running LocalCloud's VirtualClock (patches are process-wide, installed once)
