"""Throughput of the local cloud under load: many SDK events, a backfill with reads during it, a clock move.

The local cloud (template.yaml, `make dev`'s defaults: worker processes per function, 4 at most each)
runs in a subprocess. In one run:

1. moto's own speed, the yardstick: 4 client threads send GetItem, then PutItem, to a scratch table
   (no stream: nothing of the app runs) for a few seconds; requests per second served.
2. A clock move with nothing due: POST /_local/clock {"advance": "P8D"} on the fresh app (the minute
   sweeper schedule catches up in that move, with no profile due), timed from the client; twice, the
   first one starting the sweeper's worker (cold).
3. Ingest: EVENTS identify calls (one new user each, with traits) sent as POST /v1/batch of 100
   messages from 4 threads (four SDK clients flushing). Timed from the first POST to the end of the
   ProfileProcessorFunction invocation that applied the last of them (the local cloud's invocation
   log, GET /_local/invocations, followed as it grows), and to `settle` (audiences evaluated,
   everything delivered).
   The yardstick: the AWS calls the processor made for them, at moto's GetItem rate from step 1.
4. Backfill: an audience over a trait every profile has is created (POST /v1/audiences), so its
   backfill (the Step Functions state machine, 4 parallel-scan segments, AudienceBackfillFunction)
   evaluates all EVENTS profiles, while one client reads GET /v1/audiences/{key} back to back
   until it says `ready`. Backfill time: POST start to the end of the first read showing `ready`;
   read latency: each GET, p50/p95/max.

Quick mode: 300 events and profiles; FULL: 10,000 (the targets: 10,000 events reach their
profiles within 60 s, GET p95 under 1 s during a 10,000-profile backfill, that backfill under 60 s,
a clock move with nothing due under 1 s, on 2 cores).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.report import Figure
from tests.e2e.conftest import RunningCloud, start_cloud, stop_cloud

WRITE, TOKEN = "local-write-key", "local-access-token"
SECTION = "Local cloud throughput"
PROCESSOR = "ProfileProcessorFunction"
BATCH = 100  # messages per POST /v1/batch (analytics-python's default upload size)
SENDERS = 4  # SDK clients flushing at once
YARDSTICK_SECONDS = 3.0
TIMEOUT = 600.0  # per step; FULL sizes get FULL_TIMEOUT (10,000 events at moto's pace take longer)
TARGET_EVENTS, TARGET_SECONDS = 10_000, 60.0  # issue 10: 10,000 SDK events on their profiles within 60 s
FULL_TIMEOUT = 2400.0


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _cpu_seconds(cloud: RunningCloud) -> tuple[float, float] | None:
    """CPU seconds (user + system) so far of the local cloud's own process (moto, the HTTP API, the pollers:
    one Python process, one GIL) and of its worker processes (the functions: the live ones plus those it
    has reaped); None where /proc is not there (not Linux)."""
    pid, tick = cloud.process.pid, os.sysconf("SC_CLK_TCK")

    def fields(process: int) -> list[str]:
        with open(f"/proc/{process}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is [0], utime [11]

    try:
        own = fields(pid)
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: set[int] = set()
    for task in tasks:  # threads come and go (one per HTTP request): one that ended has no children left
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                children.update(int(c) for c in listed.read().split())
        except OSError:
            continue
    workers = (int(own[13]) + int(own[14])) / tick  # reaped children
    for child in children:
        try:
            stat = fields(child)
        except OSError:
            continue  # ended between the listing and the read
        workers += (int(stat[11]) + int(stat[12])) / tick
    return (int(own[11]) + int(own[12])) / tick, workers


def _moto_rate(cloud: RunningCloud, operation: str, seconds: float) -> float:
    """Requests per second moto answers from SENDERS client threads (each its own client)."""
    table = f"bench-yardstick-{uuid.uuid4().hex[:8]}"
    dynamodb = cloud.client("dynamodb")
    dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "item-0"}, "n": {"N": "0"}})
    counts = [0] * SENDERS
    stop = threading.Event()

    def load(n: int) -> None:
        client = cloud.client("dynamodb")
        while not stop.is_set():
            if operation == "GetItem":
                client.get_item(TableName=table, Key={"pk": {"S": "item-0"}})
            else:
                client.put_item(TableName=table, Item={"pk": {"S": f"item-{n}-{counts[n]}"}, "n": {"N": "1"}})
            counts[n] += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(SENDERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    rate = sum(counts) / (time.perf_counter() - started)
    dynamodb.delete_table(TableName=table)
    return rate


def _log_after(cloud: RunningCloud) -> int:
    status, _, page = cloud.call("GET", "/_local/invocations")
    assert status == 200, page
    return page["next"]


def _read_log(cloud: RunningCloud, after: int) -> list[dict]:
    entries = []
    while True:
        status, _, page = cloud.call("GET", f"/_local/invocations?after={after}")
        assert status == 200 and not page["missed"], page
        if not page["invocations"]:
            return entries
        entries += page["invocations"]
        after = page["next"]


def _settle(cloud: RunningCloud, timeout: float) -> None:
    """POST /_local/settle until it says settled (one call gives up after 50 s; a big load takes longer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _body = cloud.call("POST", "/_local/settle", {"timeout": 50})
            if status == 200:
                return
        except OSError:  # the server gave up waiting within that call: ask again
            pass
        assert time.monotonic() < deadline, f"the app did not settle within {timeout:.0f} s"


def _ingest(cloud: RunningCloud, users: int, timeout: float) -> dict:
    run = uuid.uuid4().hex[:6]
    batches = [[{"type": "identify", "userId": f"bench-{run}-{n}", "messageId": f"bench-{run}-{n}",
                 "traits": {"plan": "pro" if n % 2 else "free", "seats": n % 50, "bench": run}}
                for n in range(start, min(start + BATCH, users))] for start in range(0, users, BATCH)]
    wanted = {m["messageId"] for batch in batches for m in batch}
    after = _log_after(cloud)
    cpu_before = _cpu_seconds(cloud)
    first = time.time()

    def send(batch: list[dict]) -> None:
        status, _, body = cloud.call("POST", "/v1/batch", {"batch": batch}, auth=WRITE)
        assert status == 200, body

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(send, batches))
    accepted = time.time()
    # Follow the invocation log until the profile processor has applied every one of them.
    entries: list[dict] = []
    applied: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(applied) < len(wanted):
        assert time.monotonic() < deadline, f"{len(wanted) - len(applied)} events never reached their profiles"
        status, _, page = cloud.call("GET", f"/_local/invocations?after={after}&wait=5")
        assert status == 200 and not page["missed"], page
        entries += page["invocations"]
        after = page["next"]
        for entry in page["invocations"]:
            if entry["function"] == PROCESSOR and not entry["error"]:
                for record in entry.get("records", []):
                    if record["keys"].get("sk") in wanted:  # EventsTable sort key: the messageId
                        applied.setdefault(record["keys"]["sk"], entry["ended"])
    reached = max(applied.values())
    _settle(cloud, timeout)
    settled = time.time()
    cpu_after = _cpu_seconds(cloud)
    entries += _read_log(cloud, after)
    status, _, body = cloud.call("GET", f"/v1/spaces/local/collections/users/profiles/user_id:bench-{run}-"
                                        f"{users - 1}/traits", auth=TOKEN)
    assert status == 200 and body["traits"].get("bench") == run, body
    by_function: dict[str, list[dict]] = {}
    for entry in entries:
        by_function.setdefault(entry["function"], []).append(entry)
    processor_calls = sum(e["aws_calls"] or 0 for e in by_function.get(PROCESSOR, []) if e["ended"] <= reached)
    until_reached = [e for e in entries if e["ended"] <= reached]
    return {"run": run, "accepted": accepted - first, "profiles": reached - first, "settled": settled - first,
            "processor_calls": processor_calls, "by_function": by_function,
            "calls_until_reached": sum(e["aws_calls"] or 0 for e in until_reached),
            "calls_until_settled": sum(e["aws_calls"] or 0 for e in entries),
            "cpu": None if cpu_before is None or cpu_after is None
            else tuple(a - b for a, b in zip(cpu_after, cpu_before, strict=True))}


def _backfill(cloud: RunningCloud, profiles: int, run: str, timeout: float) -> dict:
    key = f"bench_backfill_{run}"
    latencies: list[float] = []
    after = _log_after(cloud)
    posted = time.time()
    status, _, body = cloud.call("POST", "/v1/audiences", {
        "key": key, "name": "Bench backfill", "condition": {"trait": "bench", "op": "eq", "value": run}},
        auth=TOKEN)
    assert status == 201, body
    deadline = time.monotonic() + timeout
    while True:
        sent = time.perf_counter()
        status, _, audience = cloud.call("GET", f"/v1/audiences/{key}", auth=TOKEN)
        latencies.append(time.perf_counter() - sent)
        assert status == 200, audience
        if audience["status"] != "computing":
            break
        assert time.monotonic() < deadline, f"the backfill of {key} did not end within {timeout:.0f} s"
    done = time.time()
    assert audience["status"] == "ready", audience
    # Sizes are counted by the audience router from the memberships stream (docs/audiences.md): they
    # reach the member count within its batching window after `ready`.
    while audience["size"] != profiles:
        assert time.monotonic() < deadline, f"the size of {key} stayed {audience['size']}, not {profiles}"
        time.sleep(0.5)
        status, _, audience = cloud.call("GET", f"/v1/audiences/{key}", auth=TOKEN)
    counted = time.time()
    pages = [e for e in _read_log(cloud, after) if e["function"] == "AudienceBackfillFunction"]
    return {"seconds": done - posted, "counted_seconds": counted - posted, "latencies": latencies,
            "calls": sum(e["aws_calls"] or 0 for e in pages)}


def _clock_move(cloud: RunningCloud, timeout: float) -> float:
    _settle(cloud, timeout)
    started = time.perf_counter()
    status, _, body = cloud.call("POST", "/_local/clock", {"advance": "P8D"})
    elapsed = time.perf_counter() - started
    assert status == 200, body
    return elapsed


def run(context) -> list[Figure]:
    events = 10_000 if context.full else 300
    timeout = FULL_TIMEOUT if context.full else TIMEOUT
    cloud = start_cloud()
    try:
        cpu_before = _cpu_seconds(cloud)
        get_rate = _moto_rate(cloud, "GetItem", YARDSTICK_SECONDS)
        cpu_after = _cpu_seconds(cloud)
        get_cpu_ms = None if cpu_before is None or cpu_after is None else \
            (cpu_after[0] - cpu_before[0]) * 1000 / (get_rate * YARDSTICK_SECONDS)
        put_rate = _moto_rate(cloud, "PutItem", YARDSTICK_SECONDS)
        cold_move = _clock_move(cloud, timeout)  # the sweeper's first run starts its worker
        move = _clock_move(cloud, timeout)
        ingest = _ingest(cloud, events, timeout)
        backfill = _backfill(cloud, events, ingest["run"], timeout)
        status, _, health = cloud.call("GET", "/_local/health")
        workers = health.get("workers", {}) if status == 200 else {}
        load = os.getloadavg()[0]
    finally:
        stop_cloud(cloud)
    context.notes.append(
        f"local_throughput: the machine's 1-minute load average was {load:.1f} on {os.cpu_count()} cores at the end "
        f"of the run (other work shares the cores); moto answered {get_rate:,.0f} GetItem/s in the same run. "
        f"Targets met in this run: events to profiles < 60 s: {ingest['profiles'] < 60}; GET p95 < 1 s: "
        f"{_percentile([x * 1000 for x in backfill['latencies']], 95) < 1000}; backfill < 60 s: "
        f"{backfill['seconds'] < 60}; clock move < 1 s: {move < 1} (FULL=1 sizes them at 10,000).")
    profiles_floor = ingest["processor_calls"] / get_rate
    latencies_ms = [s * 1000 for s in backfill["latencies"]]
    sends = f"{events:,} identify calls (a new user each) as POST /v1/batch of {BATCH} from {SENDERS} threads"
    figures = [
        Figure(SECTION, "moto: GetItem served", get_rate, "requests/s",
               f"yardstick: {SENDERS} client threads calling the local AWS endpoint for {YARDSTICK_SECONDS:g} s; "
               "moto answers in the local cloud's process (one GIL)", higher_is_better=True),
        Figure(SECTION, "moto: PutItem served", put_rate, "requests/s",
               "yardstick: the same with PutItem to a scratch table (no stream)", higher_is_better=True),
        Figure(SECTION, "clock move of 8 days, nothing due", move, "s",
               ("POST /_local/clock {advance: P8D} on the fresh app, client-timed: the minute sweeper's "
                "catch-up (its first and last occurrence: 2 runs, no profile due), a settle after each, and TTL expiry; target < 1 s")),
        Figure(SECTION, "clock move of 8 days, nothing due, first of the run", cold_move, "s",
               "the same move just before, whose first sweeper run starts the sweeper's worker (a cold start)"),
        Figure(SECTION, f"{events:,} SDK events: all accepted", ingest["accepted"], "s",
               f"{sends}, first POST start to last answer"),
        Figure(SECTION, f"{events:,} SDK events: all reached their profiles", ingest["profiles"], "s",
               (f"{sends}; first POST start to the end of the profile processor invocation that applied the "
                "last of them (invocation log); target < 60 s for 10,000"),
               floor=profiles_floor,
               floor_method=(f"the processor's {ingest['processor_calls']:,} AWS calls for them at moto's "
                             f"{get_rate:,.0f} GetItem/s")),
        Figure(SECTION, f"{events:,} SDK events: app settled (audiences evaluated)", ingest["settled"], "s",
               "first POST start to POST /_local/settle returning (every stream and queue delivered)"),
        Figure(SECTION, f"{events:,} SDK events: AWS requests moto served until they reached their profiles",
               ingest["calls_until_reached"] / ingest["profiles"], "requests/s",
               ("every function's AWS calls (invocation log) from the first POST to the last profile applied, "
                "over that time: compare with the yardstick above"), higher_is_better=True),
        *_cpu_figures(events, ingest, get_cpu_ms),
        Figure(SECTION, f"backfill over {events:,} profiles", backfill["seconds"], "s",
               ("POST /v1/audiences (trait condition every profile meets) to the first GET showing `ready`: "
                "Step Functions, 4 segments in AudienceBackfillFunction workers; target < 60 s for 10,000"),
               floor=backfill["calls"] / get_rate,
               floor_method=f"the backfill pages' {backfill['calls']:,} AWS calls at moto's {get_rate:,.0f} GetItem/s"),
        Figure(SECTION, f"backfill over {events:,} profiles: size counted", backfill["counted_seconds"], "s",
               "POST /v1/audiences to the first GET whose `size` is every profile: the audience router counts "
               "each membership change from the stream, after `ready` by up to its batching window"),
        Figure(SECTION, "GET /v1/audiences/{key} during the backfill, p50", _percentile(latencies_ms, 50), "ms",
               f"{len(latencies_ms)} reads back to back by one client while the backfill ran"),
        Figure(SECTION, "GET /v1/audiences/{key} during the backfill, p95", _percentile(latencies_ms, 95), "ms",
               "the same; target < 1,000 ms"),
        Figure(SECTION, "GET /v1/audiences/{key} during the backfill, max", max(latencies_ms), "ms", "the same"),
    ]
    context.extra.append(("Local cloud throughput: invocations during the ingest", _table(ingest, workers)))
    return figures


def _cpu_figures(events: int, ingest: dict, get_cpu_ms: float | None) -> list[Figure]:
    """Where the CPU goes: moto answers every function in one process on one GIL, so its CPU per event
    bounds how fast the whole app can go on any number of cores."""
    if ingest["cpu"] is None or get_cpu_ms is None:
        return []  # no /proc here
    own, workers = ingest["cpu"]
    requests = ingest["calls_until_settled"] / events
    return [
        Figure(SECTION, "moto: CPU per GetItem", get_cpu_ms, "ms",
               "yardstick: the local cloud process's CPU seconds during the GetItem yardstick above / requests "
               "served"),
        Figure(SECTION, f"{events:,} SDK events: local cloud process CPU per event", own * 1000 / events, "ms",
               (f"moto, the HTTP API and the pollers (one process, one GIL), first POST to settled, over every "
                f"function's {requests:.1f} AWS requests per event (invocation log)"),
               floor=requests * get_cpu_ms,
               floor_method=f"{requests:.1f} AWS requests per event at the yardstick's CPU per GetItem"),
        Figure(SECTION, f"{events:,} SDK events: functions' CPU per event", workers * 1000 / events, "ms",
               "every function's worker processes (handlers, boto3), first POST to settled"),
        Figure(SECTION, f"{TARGET_EVENTS:,} SDK events: the local cloud process's CPU alone",
               own * TARGET_EVENTS / events, "s",
               (f"its CPU per event above x {TARGET_EVENTS:,}: one GIL, so no number of cores takes "
                f"{TARGET_EVENTS:,} events through the app faster while moto answers every call; target "
                f"{TARGET_SECONDS:.0f} s to their profiles")),
    ]


def _table(ingest: dict, workers: dict) -> list[str]:
    lines = ["Per function, from the invocation log of the ingest step (until settled). `wait` is queued ->",
             "worker assigned (all its workers busy); `cold` counts invocations that started a worker.", "",
             ("| function | invocations | cold | records per batch | wait ms p95 | handler ms p50 | p95 | "
             "AWS calls each | workers at the end |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for function, group in sorted(ingest["by_function"].items()):
        ran = [e for e in group if e["handler_started"] is not None]
        handler = [(e["handler_ended"] - e["handler_started"]) * 1000 for e in ran] or [0.0]
        wait = [(e["started"] - e["queued"]) * 1000 for e in group]
        records = [len(e["records"]) for e in group if "records" in e]
        lines.append(f"| {function} | {len(group)} | {sum(1 for e in group if e.get('cold'))} | "
                     f"{statistics.fmean(records) if records else 0:.1f} | {_percentile(wait, 95):,.0f} | "
                     f"{_percentile(handler, 50):,.0f} | {_percentile(handler, 95):,.0f} | "
                     f"{statistics.fmean(e['aws_calls'] or 0 for e in group):.1f} | {workers.get(function, '')} |")
    return lines
