"""The virtual clock of the local cloud and its hook for time-based work.

All project code reads time through `engage.clock`; the local cloud runs that code in this
process, so moving `engage.clock` moves time for every handler. `VirtualClock.advance()`
does not jump straight to the target: it walks through every callback that comes due on
the way, in time order, with the clock set to each one's due time, and lets the app settle
(streams drained, async invocations done) after each, so cascades happen at the right
virtual moment. Then it runs the `on_advance` hooks once at the target time.

The hook for follow-up emulation (Step Functions Wait states, EventBridge schedules,
EventBridge Scheduler one-shot schedules, broadcasts' send_at):

    clock.call_at(when, callback, name)       # callback(moment) runs once when time reaches `when`
    clock.every(period, callback, name)        # recurring, first at now + period
    clock.on_advance(callback)                 # callback(previous, now) after every move

A callback may schedule more callbacks (a recurring schedule re-arms itself); those due
before the target still run in the same advance.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from engage import clock as engage_clock

log = logging.getLogger("localcloud.clock")


@dataclass(order=True)
class Timer:
    when: datetime
    seq: int
    name: str = field(compare=False)
    callback: Callable[[datetime], None] = field(compare=False, repr=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    def __init__(self, settle: Callable[[], None] = lambda: None):
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()  # one advance at a time; callbacks may schedule more
        # The heap has its own lock: threads the move is waiting for (an execution reaching a Wait
        # state during settle) must be able to schedule without waiting for the move to end.
        self._heap_lock = threading.Lock()
        self.moving_to: datetime | None = None  # target of the move in progress (schedules coalesce catch-up)
        self._hooks: list[Callable[[datetime, datetime], None]] = []
        self.settle = settle
        self.fired: list[tuple[str, str]] = []  # (name, virtual time) of callbacks run, newest last

    def now(self) -> datetime:
        return engage_clock.now()

    def offset(self) -> timedelta:
        return engage_clock.offset()

    def call_at(self, when: datetime, callback: Callable[[datetime], None], name: str) -> Timer:
        timer = Timer(when, next(self._seq), name, callback)
        with self._heap_lock:
            heapq.heappush(self._timers, timer)
        return timer

    def every(self, period: timedelta, callback: Callable[[datetime], None], name: str) -> Timer:
        """Recurring callback (rate schedules); returns the first timer (cancelling it stops the chain)."""
        if period <= timedelta(0):
            raise ValueError("period must be positive")
        head = Timer(self.now() + period, next(self._seq), name, callback)

        def fire(moment: datetime) -> None:
            if head.cancelled:
                return
            callback(moment)
            self.call_at(moment + period, fire, name)

        head.callback = fire
        with self._heap_lock:
            heapq.heappush(self._timers, head)
        return head

    def on_advance(self, hook: Callable[[datetime, datetime], None]) -> None:
        self._hooks.append(hook)

    def pending(self) -> list[Timer]:
        with self._heap_lock:
            return sorted(t for t in self._timers if not t.cancelled)

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("the clock only moves forward: give a positive duration")
        with self._lock:
            start, offset = self.now(), self.offset()
            self._move(start, start + delta)
            # Virtual time flows on while timers run (in real seconds): the move adds `delta` to the offset.
            engage_clock.advance(max(offset + delta - self.offset(), timedelta(0)))
            return self.now()

    def advance_to(self, target: datetime) -> datetime:
        with self._lock:
            start = self.now()
            if target < start:
                raise ValueError(f"the clock only moves forward: {target.isoformat()} is before now")
            return self._move(start, target)

    def run_due(self) -> int:
        """Run the timers real time has brought due (the ticker), without moving the clock.

        Real time moves the clock on its own: comparing a target taken a moment ago with `now()`
        (as `advance_to` does) would always find it in the past. Returns how many timers ran.
        `on_advance` hooks (TTL expiry) run on clock moves only.
        """
        with self._lock:
            target = self.now()
            self.moving_to = target  # schedules behind by more than CATCH_UP occurrences skip ahead
            try:
                return self._run_due(target)
            finally:
                self.moving_to = None

    def _move(self, start: datetime, target: datetime) -> datetime:
        with self._lock:
            self.moving_to = target
            try:
                self._run_due(target)
            finally:
                self.moving_to = None
            engage_clock.set_to(target)
            for hook in self._hooks:
                try:
                    hook(start, target)
                except Exception:
                    log.exception("clock hook %s failed", getattr(hook, "__name__", hook))
            self.settle()
            return self.now()

    def _run_due(self, target: datetime) -> int:
        ran = 0
        while True:
            with self._heap_lock:
                if not self._timers or self._timers[0].when > target:
                    return ran
                timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            ran += 1
            engage_clock.set_to(timer.when)
            try:
                timer.callback(timer.when)
            except Exception:
                log.exception("scheduled %s failed", timer.name)
            self.fired.append((timer.name, engage_clock.iso(timer.when)))
            del self.fired[:-1000]  # recent history only: schedules fire every minute for as long as it runs
            self.settle()

    def restore_offset(self, offset: timedelta) -> None:
        """Put the clock back where a saved state left it (relative to the real clock)."""
        if offset > timedelta(0):
            engage_clock.set_to(datetime.now(UTC) + offset)


def parse_duration(text: str) -> timedelta:
    """ISO 8601 duration (PnDTnHnMnS, PnW) -> timedelta. Years and months are not fixed lengths: refused."""
    import re

    match = re.fullmatch(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text.strip())
    if not match or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration like P3D, PT1H30M or P1W (years and months "
                         "are not supported: give days)")
    weeks, days, hours, minutes, seconds = match.groups()
    return timedelta(weeks=int(weeks or 0), days=int(days or 0), hours=int(hours or 0),
                     minutes=int(minutes or 0), seconds=float(seconds or 0))
