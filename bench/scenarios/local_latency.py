"""Latency on the local cloud: POST /v1/track -> profile shows the event -> audience membership visible,
and where that time goes: the local cloud's own overhead apart from our handlers and the template's
batching windows; with the template's default windows and with both windows at 1 s, side by side,
with what each costs in stream invocations (issue 16 item 3).

Two local clouds run one after the other in the same bench run: the first with the template's
defaults (AudienceBatchingWindowSeconds 0: the processor and the evaluator, on the way to a
membership, take records as soon as they are written; ActivationBatchingWindowSeconds 1: the
router, journey events and the destination router), the second with both parameters at 1 s (the
defaults before the measured change). Each gets the same probes below (100 per cloud in quick runs,
to keep `make bench` short; 200 with --full), and from its invocation log the scenario counts, per
stream function, invocations per probe (each probe is one track event) and records per batch.

The local cloud (template.yaml, moto server, Lambda worker processes, stream pollers) runs in a
subprocess as `make dev` runs it, warmed by one probe first (a warm worker per function; a function
that then needs more workers at once starts them, cold, during the run, as Lambda scales out; the
table after the figures counts them). The probes, each a new user sending one `Latency Probe`
track call with its own messageId, start at a steady 2 per second from their own threads (a few in
flight at once, as real traffic). 2 per second is latency on a machine that is otherwise idle: each
probe is a new user (a new profile, every audience evaluated, two memberships, their bus events and
journey entries: about 8 invocations), and at 5 per second the one-process moto on 2 cores
saturates (workers busy over 600%, every probe queued for seconds), which measures throughput,
local_throughput's subject, not latency. Each is measured from its own POST start to the end of the
first Profile API read that shows the change: /events listing it, then /traits?class=audience
showing `latency_probe` true.

The local cloud's invocation log (GET /_local/invocations, followed by long poll) times every
step: when the HTTP API received the request and queued the invocation, the wait for a worker
and the hand-over to and from it for each invocation, when each stream record was written (its
ApproximateCreationDateTime) and read by its poller, when its batch was handed over, and each
handler's start and end. A probe's records are found by key: its messageId in the EventsTable
record, its profile (GET /metadata?verbose=true) in the ProfilesTable record; its reads by
their apigw-requestid. A probe reads the Profile API once the log shows that the invocation
carrying its record has ended (then every 10 ms until the read shows it), so readers do not
flood the runtime with polls; a read never starts before the data is written, so
this never shortens the figure.

Each probe's time is cut at those moments into segments that add up exactly to its total:
  HTTP API      POST sent -> ingest queued, and the read's request in and response out
  runtime       wait for a free worker + hand-over of the event and the result to and from the
                worker process, for each invocation on the path, the read's included (local only)
  pickup        record written -> read by its poller (a write wakes the poller; on AWS Lambda
                polls each shard 4 times a second, so up to 250 ms)
  window        read -> batch handed over: the template's MaximumBatchingWindowInSeconds (the
                AudienceBatchingWindowSeconds parameter, per stream; AWS waits the same)
  handlers      ingest until its event record is written, profile_processor until the profile
                record is (its whole batch, for the profile figure), audience_evaluator, and the
                Profile API read (our code, whose AWS calls moto answers here)
  noticing      the writer's end -> the read sent (the bench following the log; earlier reads)
Local cloud's own overhead = HTTP API + runtime + pickup.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.report import Figure
from tests.e2e.conftest import RunningCloud, start_cloud, stop_cloud

WRITE, TOKEN = "local-write-key", "local-access-token"
SPACE = "local"
AUDIENCE = "latency_probe"
PROBES = 200  # per batching window with --full
QUICK_PROBES = 100  # per batching window in quick runs (two local clouds in one `make bench`)
RATE = 2.0  # probes started per second (see the module's doc)
WORKERS = 48  # probe threads (at most this many in flight)
READ_RETRY = 0.01  # seconds between Profile API reads once the log says the change is written
TIMEOUT = 30.0  # seconds a probe may wait for one stage
SECTION = "Local cloud latency"
INGEST, PROCESSOR, EVALUATOR = "IngestFunction", "ProfileProcessorFunction", "AudienceEvaluatorFunction"
AUDIENCE_WINDOW, ACTIVATION_WINDOW = "AudienceBatchingWindowSeconds", "ActivationBatchingWindowSeconds"
AUDIENCE_PATH = (PROCESSOR, EVALUATOR)  # the streams AUDIENCE_WINDOW sets; every other stream ACTIVATION_WINDOW


@dataclass
class Read:
    sent: float  # time.time() when the GET started
    seen: float  # ... and when its answer was in
    request_id: str  # apigw-requestid: finds its invocation in the log


@dataclass
class Probe:
    index: int
    user: str
    message_id: str
    posted: float = 0.0  # time.time() when its POST started
    api_request_id: str = ""
    profile_read: Read | None = None  # the first Profile API read that showed the event
    profile_id: str = ""
    member_read: Read | None = None  # the first that showed the membership


class LogFollower(threading.Thread):
    """Follows the local cloud's invocation log and indexes it by HTTP request and by record key."""

    def __init__(self, cloud: RunningCloud, after: int):
        super().__init__(name="invocation-log", daemon=True)
        self.cloud = cloud
        self.after = after
        self.entries: list[dict] = []
        self.by_request: dict[str, dict] = {}
        self.by_key: dict[tuple[str, str], list[tuple[dict, dict]]] = defaultdict(list)  # (function, key value)
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.fetch(wait=1)
        except Exception as error:  # noqa: BLE001 - reported to every waiting probe
            self.error = error
            with self.changed:
                self.changed.notify_all()

    def fetch(self, wait: float) -> int:
        """Index the next page of the log; the number of new entries."""
        status, _, page = self.cloud.call("GET", f"/_local/invocations?after={self.after}&wait={wait}")
        if status != 200:
            raise RuntimeError(f"GET /_local/invocations: {status} {page}")
        if page["missed"]:
            raise RuntimeError(f"the invocation log dropped {page['missed']} entries before they were read")
        with self.changed:
            for entry in page["invocations"]:
                self._index(entry)
            self.after = page["next"]
            self.changed.notify_all()
        return len(page["invocations"])

    def _index(self, entry: dict) -> None:
        self.entries.append(entry)
        if entry.get("http"):
            self.by_request[entry["http"]["request_id"]] = entry
        for record in entry.get("records", []):
            for value in record["keys"].values():
                self.by_key[(entry["function"], value)].append((entry, record))

    def wait(self, find, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.changed:
            while (found := find()) is None:
                if self.error:
                    raise RuntimeError("following the invocation log failed") from self.error
                if not self.changed.wait(deadline - time.monotonic()):
                    raise TimeoutError("the invocation log never showed it")
            return found

    def carried(self, function: str, key_value: str) -> tuple[dict, dict] | None:
        """The first successful invocation of `function` carrying a record with this key value, and the record."""
        return next(((e, r) for e, r in self.by_key.get((function, key_value), []) if not e["error"]), None)

    def stop(self) -> None:
        """Stop following, then read what the log got since the last page (the probes' last reads)."""
        self.stopping.set()
        self.join(timeout=5)
        while self.fetch(wait=0):
            pass


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _read_until(cloud: RunningCloud, path: str, shows) -> Read:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        sent = time.time()
        status, headers, body = cloud.call("GET", path, auth=TOKEN)
        if status == 200 and shows(body):
            return Read(sent, time.time(), headers["apigw-requestid"])
        time.sleep(READ_RETRY)
    raise TimeoutError(f"{path} never showed the change")


def _probe(cloud: RunningCloud, log: LogFollower, probe: Probe) -> Probe:
    from engage.profiles_store import profile_pk

    base = f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:{probe.user}"
    probe.posted = time.time()
    status, headers, body = cloud.call("POST", "/v1/track", {"userId": probe.user, "event": "Latency Probe",
                                                             "messageId": probe.message_id}, auth=WRITE)
    assert status == 200, body
    probe.api_request_id = headers["apigw-requestid"]
    log.wait(lambda: log.carried(PROCESSOR, probe.message_id))
    probe.profile_read = _read_until(cloud, base + "/events",
                                     lambda b: any(e.get("message_id") == probe.message_id for e in b["data"]))
    status, _, body = cloud.call("GET", base + "/metadata?verbose=true", auth=TOKEN)
    assert status == 200, body
    probe.profile_id = body["metadata"]["profile_id"]
    log.wait(lambda: log.carried(EVALUATOR, profile_pk(SPACE, probe.profile_id)))
    probe.member_read = _read_until(cloud, base + "/traits?class=audience",
                                    lambda b: b["traits"].get(AUDIENCE) is True)
    return probe


@dataclass
class Split:
    """One probe's time, segment by segment (seconds); each path's segments add up to its total."""

    profile: dict[str, float] = field(default_factory=dict)
    audience: dict[str, float] = field(default_factory=dict)


PARTS = {  # name -> whose time it is
    "HTTP API": "local cloud", "runtime": "local cloud", "pickup": "local cloud",
    "window": "template (AWS the same)", "ingest handler": "our code", "profile_processor handler": "our code",
    "audience_evaluator handler": "our code", "Profile API handler": "our code", "noticing": "bench",
}
LOCAL = ("HTTP API", "runtime", "pickup")


def split(probe: Probe, log: LogFollower) -> Split:
    """Cut the probe's time at every step the log and the bench saw (see the module doc)."""
    from engage.profiles_store import profile_pk

    ingest = log.by_request[probe.api_request_id]
    processor, event_record = log.carried(PROCESSOR, probe.message_id)
    evaluator, profile_record = log.carried(EVALUATOR, profile_pk(SPACE, probe.profile_id))
    assert ingest["function"] == INGEST and not ingest["error"], ingest

    def runtime(entry: dict) -> float:  # waiting for a worker, handing the event over and the result back
        return entry["handler_started"] - entry["queued"] + entry["ended"] - entry["handler_ended"]

    def handler(entry: dict) -> float:
        return entry["handler_ended"] - entry["handler_started"]

    def read_back(path: dict[str, float], writer: dict, read: Read) -> None:
        get = log.by_request[read.request_id]
        path["noticing"] = read.sent - writer["ended"]  # the log showing the write, and any earlier read
        path["HTTP API"] += get["queued"] - read.sent + read.seen - get["ended"]
        path["runtime"] += runtime(get)
        path["Profile API handler"] = handler(get)

    common = {
        "HTTP API": ingest["queued"] - probe.posted,
        "runtime": ingest["handler_started"] - ingest["queued"] + runtime(processor),
        "ingest handler": event_record["created"] - ingest["handler_started"],
        "pickup": event_record["read"] - event_record["created"],
        "window": processor["queued"] - event_record["read"],
    }
    profile = {**common, "profile_processor handler": handler(processor)}
    read_back(profile, processor, probe.profile_read)
    audience = {**common,
                "profile_processor handler": profile_record["created"] - processor["handler_started"],
                "audience_evaluator handler": handler(evaluator)}
    # On this path the processor's end is not on the way: its teardown, like the rest of its handler,
    # overlaps the profile record's pickup and window.
    audience["runtime"] -= processor["ended"] - processor["handler_ended"]
    audience["runtime"] += runtime(evaluator)
    audience["pickup"] += profile_record["read"] - profile_record["created"]
    audience["window"] += evaluator["queued"] - profile_record["read"]
    read_back(audience, evaluator, probe.member_read)
    for path, read in ((profile, probe.profile_read), (audience, probe.member_read)):
        assert abs(sum(path.values()) - (read.seen - probe.posted)) < 1e-6, (probe, path)  # the segments telescope
    return Split(profile, audience)


@dataclass
class WindowRun:
    """The probes of one local cloud started with these batching windows (parameter -> seconds)."""

    windows: dict[str, float]
    default: bool  # the template's defaults
    probes: list[Probe]
    splits: list[Split]
    wall: float
    busy: float
    entries: list[dict]  # the invocation log from the first probe's POST on
    load: float  # the machine's 1-minute load average at the end of the probes

    @property
    def label(self) -> str:
        audience, activation = self.windows[AUDIENCE_WINDOW], self.windows[ACTIVATION_WINDOW]
        return f"{'default ' if self.default else ''}windows {audience:g} s / {activation:g} s"


def default_windows() -> dict[str, float]:
    from localcloud import template

    parameters = template.load(template.TEMPLATE)["Parameters"]
    return {p: float(parameters[p]["Default"]) for p in (AUDIENCE_WINDOW, ACTIVATION_WINDOW)}


def run(context) -> list[Figure]:
    count = PROBES if context.full else QUICK_PROBES
    batched = dict.fromkeys((AUDIENCE_WINDOW, ACTIVATION_WINDOW), 1.0)
    runs = [measure(default_windows(), count, default=True), measure(batched, count, default=False)]
    for one in runs:
        context.extra.append((f"Local cloud latency, {one.label}: where the time goes",
                              _breakdown(one.splits, one.entries, one.busy)))
        context.notes.append(f"local_latency ({one.label}): the machine's 1-minute load average was "
                             f"{one.load:.1f} on {os.cpu_count()} cores at the end of the probes (handler times "
                             "grow with it).")
    context.extra.append(("Local cloud latency: the default windows beside both at 1 s", _side_by_side(runs)))
    return [figure for one in runs for figure in _figures(one) + _counts(one)]


def measure(windows: dict[str, float], count: int, default: bool) -> WindowRun:
    """Start a local cloud with these batching windows (the template's own when `default`), send `count`
    probes, stop it."""
    cloud = start_cloud(*([] if default else [a for p, w in windows.items() for a in ("--param", f"{p}={w:g}")]))
    log = None
    try:
        status, _, health = cloud.call("GET", "/_local/health")
        polled = {p["logical_id"]: p["batching_window"] for p in health["pollers"] if p["source"].startswith(
            "arn:aws:dynamodb:")}
        expected = {function: windows[AUDIENCE_WINDOW if function in AUDIENCE_PATH else ACTIVATION_WINDOW]
                    for function in polled}
        assert polled and polled == expected, polled  # every stream waits the window the run is labelled with
        status, _, body = cloud.call("POST", "/v1/audiences", {"key": AUDIENCE, "name": "Latency probe",
                                                               "condition": {"event": "Latency Probe"}}, auth=TOKEN)
        assert status == 201, body
        status, _, page = cloud.call("GET", "/_local/invocations")
        assert status == 200, page
        log = LogFollower(cloud, page["next"])
        log.start()
        _probe(cloud, log, Probe(-1, "probe-warmup", "latency-probe-warmup"))  # every function warm, not measured
        cloud.settle()
        probes = [Probe(i, f"probe-{i}", f"latency-probe-{i}") for i in range(count)]
        started = time.monotonic()
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="probe") as pool:
            futures = []
            for probe in probes:
                time.sleep(max(0.0, started + probe.index / RATE - time.monotonic()))
                futures.append(pool.submit(_probe, cloud, log, probe))
            done = [future.result() for future in futures]
        wall = time.monotonic() - started
        load = os.getloadavg()[0]
        cloud.settle()  # the probes' batches of the other stream functions (router, journeys, destinations) too
        log.stop()
    finally:
        if log is not None:
            log.stopping.set()  # on failure: the follower is a daemon thread, it ends with its next page
        stop_cloud(cloud)
    splits = [split(p, log) for p in done]
    first = min(p.posted for p in done)
    entries = [e for e in log.entries if e["queued"] >= first]
    busy = sum(e["ended"] - e["started"] for e in entries) / max(max(e["ended"] for e in entries) - first, 1e-9)
    return WindowRun(windows, default, done, splits, wall, busy, entries, load)


def _ms(values) -> list[float]:
    return [v * 1000 for v in values]


def _figures(one: WindowRun) -> list[Figure]:
    probes, splits = one.probes, one.splits
    run_text = (f"{one.label}: {len(probes)} probes (new user each) started at {RATE:g}/s over {one.wall:.0f} s, "
                f"workers busy {one.busy:.0%}; each from its own POST start")
    series = {
        "track -> profile updated": (_ms(p.profile_read.seen - p.posted for p in probes),
                                     f"{run_text} to the end of the first Profile API /events read listing it"),
        "track -> audience membership visible": (_ms(p.member_read.seen - p.posted for p in probes),
                                                 (f"{run_text} to the end of the first /traits?class=audience "
                                                  "read showing it")),
        "local cloud's own overhead, track -> profile updated": (
            _ms(sum(s.profile[k] for k in LOCAL) for s in splits),
            ("HTTP API + runtime (worker waits and hand-overs) + stream pickup, per probe from the local cloud's "
             "invocation log (GET /_local/invocations); not our handlers, the batching window or the bench")),
        "local cloud's own overhead, track -> audience membership": (
            _ms(sum(s.audience[k] for k in LOCAL) for s in splits),
            "the same over ingest, profile_processor, audience_evaluator, both streams and the read"),
    }
    parts = {  # figure name -> (part, method)
        "HTTP API: POST in, Profile API read in and out": (
            "HTTP API", "local cloud: loopback, server thread, payload 2.0 event, response"),
        "runtime: worker waits + hand-overs of the 4 invocations": (
            "runtime", ("local cloud: each invocation waits for a worker of its function (only when all are busy) "
                        "and hands its event over a socket and gets the result back; on AWS the same in Lambda")),
        "stream pickup, 2 streams": (
            "pickup", ("local cloud: record written (ApproximateCreationDateTime) -> read by its poller (a write "
                       "wakes it); Lambda polls a shard 4 times a second (<= 250 ms)")),
        "batching windows, 2 streams": (
            "window", (f"template: MaximumBatchingWindowInSeconds {one.windows[AUDIENCE_WINDOW]:g} per stream "
                       "(AudienceBatchingWindowSeconds), record read -> batch handed over; AWS waits the same")),
        "ingest handler, until its event is in the stream": (
            "ingest handler", "our code (its AWS calls are answered by moto, ~10 ms each)"),
        "profile_processor handler, until the profile is in the stream": (
            "profile_processor handler", "our code: the batch up to this profile's write"),
        "audience_evaluator handler": ("audience_evaluator handler", "our code: the whole batch"),
        "Profile API handler (the read)": ("Profile API handler", "our code: the /traits read that showed it"),
        "noticing the write (bench)": (
            "noticing", ("evaluator's end -> the read started: the bench follows the invocation log (long poll) "
                         "and reads once it shows the write")),
    }
    for name, (part, method) in parts.items():
        series[f"part of track -> audience: {name}"] = (_ms(s.audience[part] for s in splits), method)
    return [Figure(SECTION, f"{one.label}: {name}, p{q}", _percentile(values, q), "ms", method)
            for name, (values, method) in series.items() for q in (50, 95)]


def _stream_use(one: WindowRun) -> dict[str, tuple[int, int]]:
    """Stream or queue function (its invocations carry records) -> (invocations, records), probes and settle."""
    use: dict[str, tuple[int, int]] = {}
    for entry in one.entries:
        if "records" in entry and entry["handler_started"] is not None:
            calls, records = use.get(entry["function"], (0, 0))
            use[entry["function"]] = (calls + 1, records + len(entry["records"]))
    return use


def _counts(one: WindowRun) -> list[Figure]:
    # Not counted (guarded): how many records share a batch depends on timing, most of all at window 0.
    method = (f"{one.label}: invocations of the stream or queue function (every batch, filtered-in records) while the "
              f"{len(one.probes)} probes ran and settled, from the invocation log, per probe (one track event each)")
    figures = []
    for function, (calls, records) in sorted(_stream_use(one).items()):
        figures += [Figure(SECTION, f"{one.label}: {function} invocations per event", calls / len(one.probes),
                           "invocations", method),
                    Figure(SECTION, f"{one.label}: {function} records per batch", records / calls, "records",
                           f"{one.label}: records the function got per invocation, the same run")]
    return figures


def _side_by_side(runs: list[WindowRun]) -> list[str]:
    def p(values: list[float], q: int) -> str:
        return f"{_percentile(_ms(values), q):,.0f}"

    head = " | ".join(one.label for one in runs)
    lines = [("Two local clouds in the same bench run, one after the other (the template's defaults first), the same "
              f"probes ({RATE:g} per second); windows given as AudienceBatchingWindowSeconds (processor, evaluator) / "
              "ActivationBatchingWindowSeconds (router, journey events, destination router). Times in ms; the "
              "machine is shared, see the notes for its load."), "",
             f"| figure | {head} |", "| --- |" + " ---: |" * len(runs)]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for q in (50, 95):
        row(f"track -> audience membership visible, p{q}", [p([m.member_read.seen - m.posted for m in one.probes], q)
                                                           for one in runs])
        row(f"of which batching windows, p{q}", [p([s.audience["window"] for s in one.splits], q) for one in runs])
        row(f"of which the local cloud's own overhead, p{q}",
            [p([sum(s.audience[k] for k in LOCAL) for s in one.splits], q) for one in runs])
    row("track -> profile updated, p95", [p([m.profile_read.seen - m.posted for m in one.probes], 95) for one in runs])
    uses = [_stream_use(one) for one in runs]
    for function in sorted({f for use in uses for f in use}):
        row(f"{function}: invocations per event",
            [f"{use.get(function, (0, 0))[0] / len(one.probes):.2f}" for one, use in zip(runs, uses, strict=True)])
        row(f"{function}: records per batch",
            [f"{use[function][1] / use[function][0]:.1f}" if function in use else "-" for use in uses])
    lines.append("| stream and queue invocations per event, all | " + " | ".join(
        f"{sum(c for c, _ in use.values()) / len(one.probes):.2f}" for one, use in zip(runs, uses, strict=True)) + " |")
    return lines


def _breakdown(splits: list[Split], entries: list[dict], busy: float) -> list[str]:
    def stats(values: list[float]) -> str:
        return f"{_percentile(values, 50):,.0f} | {_percentile(values, 95):,.0f} | {statistics.fmean(values):,.0f}"

    lines = ["Per probe, in ms. The means of the parts add up to the mean total (the segments telescope);",
             "percentiles do not add. Method: bench/scenarios/local_latency.py and docs/benchmarks.md.", "",
             "| part | whose | to profile: p50 | p95 | mean | to audience: p50 | p95 | mean |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for part, whose in PARTS.items():
        profile = stats(_ms(s.profile[part] for s in splits)) if part in splits[0].profile else " |  | "
        audience = stats(_ms(s.audience[part] for s in splits))
        lines.append(f"| {part} | {whose} | {profile} | {audience} |")
    lines.append(f"| **total** |  | {stats(_ms(sum(s.profile.values()) for s in splits))} | "
                 f"{stats(_ms(sum(s.audience.values()) for s in splits))} |")
    lines += ["", f"Invocations while the probes ran (workers busy {busy:.0%} of the time, summed over every worker):",
              "", ("| function | invocations | cold (started a worker) | records per batch | handler ms p50 | p95 | "
                   "AWS calls each | share of handler time in AWS calls (moto) |"),
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_function: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        if entry["handler_started"] is not None:
            by_function[entry["function"]].append(entry)
    for function, group in sorted(by_function.items()):
        handler = [(e["handler_ended"] - e["handler_started"]) * 1000 for e in group]
        records = [len(e["records"]) for e in group if "records" in e]
        aws = sum(e["aws_seconds"] or 0 for e in group) * 1000
        lines.append(f"| {function} | {len(group)} | {sum(1 for e in group if e.get('cold'))} | "
                     f"{statistics.fmean(records) if records else 0:.1f} | "
                     f"{_percentile(handler, 50):,.0f} | {_percentile(handler, 95):,.0f} | "
                     f"{statistics.fmean(e['aws_calls'] or 0 for e in group):.1f} | "
                     f"{aws / max(sum(handler), 1e-9):.0%} |")
    return lines
