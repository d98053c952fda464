"""Cost per event on a realistic space (issue 16), stage by stage, each beside its floor.

Quick mode: 200 persons (about 1,700 messages: moto's item copies make larger runs slow);
--full: 10,000 persons (about 83,500 messages).
The month of traffic of `bench.space.Space` (identified and anonymous profiles, merges,
accounts, Pareto-distributed activity) is sent as analytics.js batches to the real ingest
handler (`POST /v1/batch`) with the project clock moved to each batch's send time, over 30
days of virtual time. Streams are drained like event source mappings (batches of up to 100,
i.e. a space busy enough to fill them) whenever 100 messages have arrived: EventsTable ->
profile_processor, ProfilesTable -> audience_evaluator, MembershipsTable -> audience_router.
The sweeper runs at every virtual hour (its schedule is every minute: the runs in between
find nothing more due and are a fixed monthly cost, reported apart), so windows open and close:
its dispatch, then the sweep worker for each bucket message it sent (SweepQueue, BatchSize 1,
with the poller's receive and delete counted as SQS requests).
100 audiences from the seeds' use cases (`bench.space.audiences`) are defined from the start.
Then the same space's second month (`Space.next_month`: returning persons, new ones, the first
month's windows closing) on the same tables, metered apart: the month 2 section and column.

Beside it, the pipeline_cost workload (40 profiles, 200 one-message requests; 200 and 1,000
with --full), measured the same way: the small column.

AudienceEventGrouping=evaluation (one EventBridge entry per profile evaluation) is not run a second
time: the router runs in the default grouping (one entry per change), and every batch handed to it is
also passed through the router's own entry builder in `evaluation` mode (`router.entries_of`, what the
router would send for the same changes), so the opt-in's entries are counted on the very same
batches. Its USD replaces only the EventBridge line: the router's DynamoDB reads and writes are the
same log reads and commits in both groupings (its commits fall every 50 accepted changes, so their
boundaries can move by one PutEvents call: a few counter writes per batch at most), and its Lambda
time would be a little lower (fewer PutEvents calls), so the figure is if anything an over-estimate.

Floors (issue 16 item 2), in write units per event: ingest, one write of the event item;
profile processor, one write of the profile bytes that changed (from each ProfilesTable stream
record: changed attributes, map entries compared key by key, rounded up to 1 KB per write);
evaluator and sweep worker, one write unit per membership change they made; router, none (its
floor is one EventBridge entry per change); the sweeper's dispatch, none (it reads the index).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bench.meter import KB, attribute_size, item_size
from bench.report import Figure

START = datetime(2030, 1, 1, tzinfo=UTC)
STAGES = ["ingest", "profile_processor", "audience_evaluator", "audience_router", "audience_sweeper",
          "audience_sweep_worker"]
DRAIN_EVERY = 100
MINUTES_A_MONTH = 30 * 24 * 60
QUICK_PERSONS = 200


@dataclass
class Run:
    """What one workload cost: the metered functions, events measured, floors and changes by stage."""
    name: str
    lambdas: object
    events: int
    floor_wru: Counter = field(default_factory=Counter)  # stage -> floor write units
    changes: Counter = field(default_factory=Counter)  # stage -> membership changes written
    by_audience: Counter = field(default_factory=Counter)  # audience key -> membership changes
    idle_sweeps: int = 0  # sweeper runs that found nothing due, and what they asked of DynamoDB
    idle_sweep_requests: int = 0
    idle_sweep_rru: float = 0.0
    idle_sweep_wru: float = 0.0
    skipped_sweeps: int = 0  # hourly runs not made: nothing was due
    poller_sqs_requests: int = 0  # Lambda's SweepQueue poller: receives and deletes (billed SQS requests)
    profiles: int = 0
    profile_writes: int = 0  # ProfilesTable stream records, and the bytes of their new images
    profile_bytes: int = 0
    grouped_entries: int = 0  # entries the router would send with AudienceEventGrouping=evaluation
    grouped_puts: int = 0  # and its PutEvents calls
    notes: list[str] = field(default_factory=list)


class Shards:
    """Reads what each invocation wrote to the three streams (in-process moto, unmetered) to
    compute floors: event item sizes, profile bytes changed, membership flips."""

    def __init__(self, tables: dict):
        self.tables = {"events": tables["EventsTable"], "profiles": tables["ProfilesTable"],
                       "memberships": tables["MembershipsTable"]}
        self.position = {name: len(self._shard(name).items) for name in self.tables}

    def _shard(self, name: str):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        from bench.harness import REGION
        return dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(self.tables[name]).stream_shard

    def _new(self, name: str) -> list[dict]:
        items = self._shard(name).items
        out = [item.to_json()["dynamodb"] for item in items[self.position[name]:]]
        self.position[name] = len(items)
        return out

    def account(self, run: Run, stage: str) -> None:
        for record in self._new("events"):
            run.floor_wru[stage] += _units(item_size(record.get("NewImage")))
        for record in self._new("profiles"):
            old, new = record.get("OldImage"), record.get("NewImage")
            if new is None:
                run.floor_wru[stage] += 1  # a merged-away profile's delete
                continue
            run.profile_writes += 1
            run.profile_bytes += item_size(new)
            if old is None:
                run.floor_wru[stage] += _units(item_size(new))
            else:
                run.floor_wru[stage] += _units(changed_bytes(old, new))
        for record in self._new("memberships"):
            old, new = record.get("OldImage") or {}, record.get("NewImage") or {}
            if new and _flag(old) != _flag(new):
                run.changes[stage] += 1
                run.floor_wru[stage] += 1
                run.by_audience[new.get("audience_key", {}).get("S", "?")] += 1


def _flag(image: dict) -> bool:
    return bool(image.get("member", {}).get("BOOL"))


def _units(size: int) -> int:
    return max(math.ceil(size / KB), 1)


def changed_bytes(old: dict, new: dict) -> int:
    """Bytes of `new` (wire format) that differ from `old`: changed attributes, maps compared entry by entry."""
    total = 0
    for name, value in new.items():
        before = old.get(name)
        if before == value:
            continue
        if before is not None and "M" in value and "M" in before:
            total += len(name.encode()) + 1 + changed_bytes(before["M"], value["M"])
        else:
            total += len(name.encode()) + attribute_size(value)
    return total + sum(len(name.encode()) for name in old.keys() - new.keys())


def _metered(lambdas, shards: Shards, run: Run):
    def invoke(function: str, event: dict):
        result = lambdas.invoke(function, event)
        shards.account(run, function)
        if function == "audience_router":
            _count_grouped(run, event, result)
        return result
    return invoke


def _count_grouped(run: Run, batch: dict, result: dict) -> None:
    """What the router would have sent for this batch with AudienceEventGrouping=evaluation: the same changes
    (each (log item, element) once, as route_batch dedupes them) through its own entry builder (unmetered)."""
    from boto3.dynamodb.types import TypeDeserializer

    from engage.audiences import bus, router

    if result.get("batchItemFailures"):
        raise AssertionError(f"the router failed records of a benchmark batch: {result}")
    plain = TypeDeserializer()
    changes = {}
    for record in batch["Records"]:
        images = record["dynamodb"]
        old, new = ({n: plain.deserialize(v) for n, v in (images.get(name) or {}).items()} or None
                    for name in ("OldImage", "NewImage"))
        change = router.change_of(old, new)
        if change is not None:
            changes.setdefault((router.log_id(change), router.element_of(change)), change)
    entries = [entry for entry, _ in router.entries_of(list(changes.values()), bus.EVALUATION, {}, "bus")]
    run.grouped_entries += len(entries)
    run.grouped_puts += len(list(router.put_groups(entries)))


def _drain(invoke, taps) -> None:
    moved = True
    while moved:
        moved = False
        for function, tap in taps:
            for batch in tap.batches(100):
                invoke(function, batch)
                moved = True


def _sweep_buckets(invoke, made, run: Run) -> None:
    """SweepQueue into the sweep worker, a message a batch (BatchSize 1), as Lambda's poller does: one
    ReceiveMessage and one DeleteMessage per message, metered apart (Lambda makes and bills them)."""
    import boto3

    from bench.harness import REGION
    from bench.meter import measure

    sqs, url = boto3.client("sqs", region_name=REGION), made["queues"]["SweepQueue"]
    while True:
        with measure() as usage:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, AttributeNames=["All"]).get("Messages")
        run.poller_sqs_requests += usage.count("sqs")
        if not messages:
            return
        [message] = messages
        result = invoke("audience_sweep_worker", {"Records": [{
            "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": message["Attributes"], "messageAttributes": {}, "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs", "awsRegion": REGION,
            "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:SweepQueue.fifo"}]})
        if result.get("batchItemFailures"):
            raise AssertionError(f"the sweep worker failed a benchmark bucket: {result}")
        with measure() as usage:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        run.poller_sqs_requests += usage.count("sqs")


def _taps(made):
    from bench.harness import StreamTap
    return [("profile_processor", StreamTap(made["tables"]["EventsTable"])),
            ("audience_evaluator", StreamTap(made["tables"]["ProfilesTable"])),
            ("audience_router", StreamTap(made["tables"]["MembershipsTable"]))]


def realistic(full: bool) -> tuple[Run, Run]:
    """The space's first month, then its second (`Space.next_month`) on the same tables, each metered apart."""
    from bench import space
    from bench.harness import Lambdas, moto_account
    from engage.audiences import parse_definition, store

    persons = 10_000 if full else QUICK_PERSONS
    first = space.Space(persons, START)
    with moto_account(now=START - timedelta(hours=1)) as made:
        for spec in space.audiences(100):
            store.create("acme", parse_definition(spec).to_dict())
        taps = _taps(made)
        months = []
        for name, traffic in (("realistic", first), ("realistic, month 2", first.next_month())):
            months.append(_month(made, taps, Run(name, Lambdas(), 0), traffic))
    return months[0], months[1]


def _month(made, taps, run: Run, traffic) -> Run:
    """Send `traffic`'s SDK batches at their send times, streams drained and the sweeper run hourly."""
    from bench import workload
    from engage import clock

    flushes = traffic.batches()
    run.events = sum(len(chunk) for _, chunk in flushes)
    shards = Shards(made["tables"])
    invoke = _metered(run.lambdas, shards, run)
    sweeper = run.lambdas.stats["audience_sweeper"]
    next_sweep = traffic.start + timedelta(hours=1)
    pending = 0

    def sweep_until(moment: datetime) -> None:
        nonlocal next_sweep, pending
        while next_sweep <= moment:
            _drain(invoke, taps)
            pending = 0
            # An hourly run with nothing due is skipped (peeked at in moto, unmetered), except the
            # first of each day, which closes the day; the skipped ones are priced as the idle runs.
            if next_sweep.hour == 0 or _anything_due(made, next_sweep):
                clock.set_to(next_sweep)
                before = (sweeper.usage.count("dynamodb"), sweeper.usage.read_units, sweeper.usage.write_units)
                report = invoke("audience_sweeper", workload.sample("audience_sweeper_schedule.json"))
                _sweep_buckets(invoke, made, run)
                if report["buckets"] == 0:  # nothing due: the schedule's fixed cost, kept apart
                    run.idle_sweeps += 1
                    run.idle_sweep_requests += sweeper.usage.count("dynamodb") - before[0]
                    run.idle_sweep_rru += sweeper.usage.read_units - before[1]
                    run.idle_sweep_wru += sweeper.usage.write_units - before[2]
                _drain(invoke, taps)
            else:
                run.skipped_sweeps += 1
            next_sweep += timedelta(hours=1)

    for when, chunk in flushes:
        sweep_until(when)
        clock.set_to(when + timedelta(seconds=1))
        body = {"batch": chunk, "sentAt": chunk[-1]["timestamp"]}
        response = invoke("ingest", workload.api_event("batch", body))
        if response["statusCode"] != 200:
            raise AssertionError(f"ingest refused a benchmark batch: {response}")
        pending += len(chunk)
        if pending >= DRAIN_EVERY:
            _drain(invoke, taps)
            pending = 0
    sweep_until(traffic.end)
    _drain(invoke, taps)
    run.profiles = _count_profiles(made)
    returning = sum(person.returning for person in traffic.persons)
    who = (f"{len(traffic.persons):,} persons ({returning:,} returning from the first month, "
           f"{len(traffic.persons) - returning:,} new)" if returning else f"{len(traffic.persons):,} persons")
    run.notes.append(f"{who}, {len(flushes):,} SDK batches, {run.events:,} messages, "
                     f"{traffic.accounts} accounts, {run.profiles:,} profile items at the end")
    return run


def small(full: bool) -> Run:
    """pipeline_cost's workload, measured with the same floors."""
    from bench import workload
    from bench.harness import Lambdas, moto_account
    from bench.scenarios import pipeline_cost

    profiles, events = (200, 1000) if full else (40, 200)
    anchor = pipeline_cost.ANCHOR
    with moto_account(now=anchor) as made:
        from engage.audiences import parse_definition, store
        for spec in workload.audiences(pipeline_cost.AUDIENCES):
            store.create("acme", parse_definition(spec).to_dict())
        lambdas = Lambdas()
        taps = _taps(made)
        traffic = workload.Traffic(profiles)

        def drive(messages, run):
            shards = Shards(made["tables"])
            invoke = _metered(lambdas, shards, run)
            for i, message in enumerate(messages):
                if invoke("ingest", workload.api_event(message["type"], message))["statusCode"] != 200:
                    raise AssertionError("ingest refused a benchmark message")
                if i % 100 == 99:
                    _drain(invoke, taps)
            _drain(invoke, taps)

        drive(traffic.warm_up(anchor - timedelta(days=20), anchor - timedelta(days=10)), Run("warm-up", None, 0))
        lambdas.reset()
        run = Run("small", lambdas, events)
        drive(traffic.steady(events, anchor - timedelta(days=10), anchor), run)
        run.profiles = _count_profiles(made)
    run.notes.append(f"{profiles} profiles, {events} steady messages one request each (after a warm-up)")
    return run


def _anything_due(made, moment: datetime) -> bool:
    """Whether DueTable holds a profile due at `moment` (read in moto directly: not an AWS request)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    from bench.harness import REGION
    from engage import clock
    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(made["tables"]["DueTable"])
    limit = clock.iso(moment)
    for item in table.all_items():
        due_at = item.attrs.get("due_at")
        if due_at is not None and due_at.value <= limit:
            return True
    return False


def _count_profiles(made) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    from bench.harness import REGION
    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(made["tables"]["ProfilesTable"])
    return sum(1 for _ in table.all_items())


# -- figures and tables ---------------------------------------------------------------------------
def _stage_rows(run: Run) -> list[dict]:
    rows = []
    for stage in STAGES:
        stats = run.lambdas.stats.get(stage)
        if stats is None or not stats.invocations:
            continue
        usage = stats.usage
        sweeper = stage == "audience_sweeper"  # runs that found nothing due are the fixed cost, apart
        idle = (run.idle_sweeps, run.idle_sweep_requests, run.idle_sweep_rru, run.idle_sweep_wru) if sweeper \
            else (0, 0, 0.0, 0.0)
        rows.append({"stage": stage, "invocations": (stats.invocations - idle[0]) / run.events,
                     "requests": (usage.count("dynamodb") - idle[1]) / run.events,
                     "rru": (usage.read_units - idle[2]) / run.events,
                     "wru": (usage.write_units - idle[3]) / run.events,
                     "floor": run.floor_wru[stage] / run.events,
                     "changes": run.changes[stage] / run.events})
    return rows


def _money(run: Run) -> dict:
    from bench.scenarios.pipeline_cost import LAMBDA_GB, PRICES

    total = run.lambdas.total()
    usage = total.usage
    per = 1e6 / run.events
    requests_aws = sum(usage.requests.values()) - run.idle_sweep_requests
    gb_s = (usage.own_seconds * 1769 / 512 + requests_aws * 0.005) * LAMBDA_GB * per
    invocations = (total.invocations - run.idle_sweeps) * per
    out = {
        "DynamoDB requests": (usage.count("dynamodb") - run.idle_sweep_requests) * per,
        "DynamoDB read units": (usage.read_units - run.idle_sweep_rru) * per,
        "DynamoDB write units": (usage.write_units - run.idle_sweep_wru) * per,
        "membership changes": sum(run.changes.values()) * per,
        "Lambda invocations": invocations,
        "Lambda GB-s (modelled)": gb_s,
        "EventBridge entries": usage.bus_events * per,
        "API Gateway requests": run.lambdas.stats["ingest"].invocations * per,
        "log GB": total.log_bytes * per / 1e9,
    }
    usd = {
        "DynamoDB": out["DynamoDB write units"] * PRICES["dynamodb_wru"] + out["DynamoDB read units"] * PRICES["dynamodb_rru"],
        "Lambda": invocations * PRICES["lambda_request"] + gb_s * PRICES["lambda_gb_second_arm64"],
        "EventBridge": out["EventBridge entries"] * PRICES["eventbridge_event"],
        "API Gateway": out["API Gateway requests"] * PRICES["http_api_request"],
        "CloudWatch Logs": out["log GB"] * PRICES["cloudwatch_logs_gb"],
        "SQS": (usage.count("sqs") + run.poller_sqs_requests) * per * PRICES["sqs_request"],
    }
    out["usd"] = usd
    out["USD"] = sum(usd.values())
    # AudienceEventGrouping=evaluation: the same run with one entry per profile evaluation (module docstring).
    out["EventBridge entries (evaluation grouping)"] = run.grouped_entries * per
    out["USD total (evaluation grouping)"] = out["USD"] - usd["EventBridge"] + \
        out["EventBridge entries (evaluation grouping)"] * PRICES["eventbridge_event"]
    return out


_FAMILIES = ["trait", "windowed count", "trait + windowed count", "property filter", "not performed lately",
             "page / offer views", "funnel", "audience of audiences", "recency in hours", "accounts"]
_FLOORS = {"ingest": "one write of the event item", "profile_processor": "one write of the profile bytes that changed",
           "audience_evaluator": "one write unit per membership change", "audience_router": "none",
           "audience_sweeper": "none (the dispatch only reads the index)",
           "audience_sweep_worker": "one write unit per membership change"}


def run(context) -> list[Figure]:
    big, later = realistic(context.full)
    little = small(context.full)
    persons = 10_000 if context.full else QUICK_PERSONS
    figures = _figures(f"Realistic workload: cost per event by stage ({persons:,} persons, 30 days)", big)
    figures += _figures(f"Realistic workload, month 2: cost per event by stage (the {persons:,}-person space's "
                        "next 30 days)", later)
    context.extra.append(("Realistic workload: per stage, per event, beside the floor",
                          _tables(big, later, little, context)))
    return figures


def _figures(section: str, run: Run) -> list[Figure]:
    figures = []
    for row in _stage_rows(run):
        stage = row["stage"]
        figures += [
            Figure(section, f"{stage}: DynamoDB requests per event", row["requests"], "requests",
                   "counted by bench.meter; SDK batches through ingest, streams in batches of <= 100", counted=True),
            Figure(section, f"{stage}: write units per event", row["wru"], "WRU",
                   "from item sizes as on-demand bills", counted=True,
                   floor=row["floor"] or None, floor_method=_FLOORS[stage]),
            Figure(section, f"{stage}: read units per event", row["rru"], "RRU", "from item sizes", counted=True),
            Figure(section, f"{stage}: invocations per event", row["invocations"], "invocations",
                   "one per SDK batch (ingest), per stream batch, per sweeper run with work", counted=True),
        ]
    money = _money(run)
    figures += [
        Figure(section, "membership changes per event", money["membership changes"] / 1e6, "changes",
               "MembershipsTable stream records whose `member` flipped, all writers", counted=True),
        Figure(section, "EventBridge entries per event", money["EventBridge entries"] / 1e6, "entries",
               "Audience Entered/Exited published by the router", counted=True),
        Figure(section, "EventBridge entries per event (AudienceEventGrouping=evaluation)",
               money["EventBridge entries (evaluation grouping)"] / 1e6, "entries",
               "one Audience Memberships Changed per profile evaluation per router batch: the router's entry "
               "builder in that mode run on each batch of this run (the router itself runs the default)",
               counted=True),
        Figure(section, "all stages: write units per event", money["DynamoDB write units"] / 1e6, "WRU",
               "the sum of the stages", counted=True),
        Figure(section, "USD per million events (modelled Lambda duration)", money["USD"], "USD",
               "list prices of pipeline_cost; Lambda GB-s = own time x 1769/512 + 5 ms per AWS request"),
        Figure(section, "USD per million events, AudienceEventGrouping=evaluation (modelled Lambda duration)",
               money["USD total (evaluation grouping)"], "USD",
               "the line above with EventBridge at the grouped entries (DynamoDB and Lambda as measured)"),
    ]
    return figures


def _price(name: str) -> float:
    from bench.scenarios.pipeline_cost import PRICES
    return PRICES[name]


def _tables(big: Run, later: Run, little: Run, context) -> list[str]:
    lines = [(f"Realistic: {big.notes[0]}. Month 2 (the same space's next 30 days, on the same tables): "
              f"{later.notes[0]}. Small (pipeline_cost's): {little.notes[0]}. "
             "Floors: one event write; one profile write of the bytes that changed; one write per membership change "
             "(docs/benchmarks.md). Sweeper runs with nothing due are left out of the per-event figures (fixed cost, below)."), ""]
    for run in (big, later, little):
        lines += [f"**{run.name}**", "",
                  "| stage | invocations | DynamoDB requests | RRU | WRU | floor WRU | WRU / floor | membership changes |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = _stage_rows(run)
        for row in rows:
            ratio = f"{row['wru'] / row['floor']:.1f}x" if row["floor"] else "-"
            lines.append(f"| {row['stage']} | {row['invocations']:.4f} | {row['requests']:.3f} | {row['rru']:.3f} | "
                         f"{row['wru']:.3f} | {row['floor']:.3f} | {ratio} | {row['changes']:.3f} |")
        wru, floor = sum(r["wru"] for r in rows), sum(r["floor"] for r in rows)
        lines += [(f"| **all** | {sum(r['invocations'] for r in rows):.4f} | {sum(r['requests'] for r in rows):.3f} | "
                  f"{sum(r['rru'] for r in rows):.3f} | **{wru:.3f}** | {floor:.3f} | {wru / floor:.1f}x | "
                  f"{sum(r['changes'] for r in rows):.3f} |"), ""]
    money = [_money(run) for run in (big, later, little)]
    lines += ["| per million events | realistic | realistic, month 2 | small |", "| --- | ---: | ---: | ---: |"]
    for key in ("DynamoDB requests", "DynamoDB read units", "DynamoDB write units", "membership changes",
                "Lambda invocations", "Lambda GB-s (modelled)", "EventBridge entries", "API Gateway requests"):
        lines.append(f"| {key} | " + " | ".join(f"{m[key]:,.0f}" for m in money) + " |")
    for key in money[0]["usd"]:
        lines.append(f"| USD: {key} | " + " | ".join(f"{m['usd'][key]:,.2f}" for m in money) + " |")
    lines += ["| **USD total** | " + " | ".join(f"**{m['USD']:,.2f}**" for m in money) + " |"]
    key, price = "EventBridge entries (evaluation grouping)", _price("eventbridge_event")
    router_puts = big.lambdas.stats["audience_router"].usage.count("events", "PutEvents") / big.events
    lines += ["| EventBridge entries, AudienceEventGrouping=evaluation | " + " | ".join(f"{m[key]:,.0f}" for m in money) + " |",
              "| USD: EventBridge, AudienceEventGrouping=evaluation | "
              + " | ".join(f"{m[key] * price:,.2f}" for m in money) + " |",
              "| **USD total, AudienceEventGrouping=evaluation** | "
              + " | ".join(f"**{m['USD total (evaluation grouping)']:,.2f}**" for m in money) + " |", "",
              ("AudienceEventGrouping=evaluation rows: the router ran in the default grouping; each of its batches "
               "was also passed through its entry builder in `evaluation` mode (counted, not sent). Only the "
               f"EventBridge line differs (realistic: PutEvents calls per event {big.grouped_puts / big.events:.3f} "
               f"instead of {router_puts:.3f})."), ""]
    lines += _write_units_by_table(big, later)
    per_run = big.idle_sweep_requests / big.idle_sweeps if big.idle_sweeps else 0
    for run in (big, later, little):
        if run.profile_writes:
            lines.append(f"{run.name}: {run.profile_writes / run.events:.2f} profile writes per event, the profile item "
                         f"{run.profile_bytes / run.profile_writes / KB:.2f} KB on average after a write.")
    lines.append("")
    lines.append(f"Fixed cost of the sweeper schedule (every minute, whatever the traffic, {MINUTES_A_MONTH:,} "
                 f"invocations a month): {big.idle_sweeps} runs found nothing due (the midnight ones, which see two "
                 f"open days; {big.skipped_sweeps} hourly runs with nothing due were skipped), {per_run:.1f} DynamoDB "
                 "requests each (a Query per due shard per open day); a run with one open day makes half as many.")
    families = Counter()
    for key, n in big.by_audience.items():
        families[_FAMILIES[int(key[1:]) % 10] if key[1:].isdigit() else key] += n
    lines += ["", "Membership changes per event by audience family (realistic, `bench.space.audiences`):", "",
              "| family | changes per event |", "| --- | ---: |"]
    lines += [f"| {name} | {n / big.events:.3f} |" for name, n in families.most_common()]
    return lines


def _write_units_by_table(big: Run, later: Run) -> list[str]:
    """Where each stage's write units go: by table and operation (a table's GSI writes counted with it;
    a transaction's items at two units per KB; writes refused by their condition apart)."""
    rows: dict[tuple[str, str, str], list[float]] = {}
    for column, run in enumerate((big, later)):
        for stage in STAGES:
            for (table, operation), units in run.lambdas.stats[stage].usage.write_units_by.items():
                rows.setdefault((stage, table, operation), [0.0, 0.0])[column] = units / run.events
    lines = ["", ("Where the write units go, per event: by stage, table and operation (a table's GSI writes are "
                  "counted with it; transactions bill two units per KB of each item; `refused`: writes their "
                  "condition refused, billed all the same)."), "",
             "| stage | table | operation | realistic | realistic, month 2 |", "| --- | --- | --- | ---: | ---: |"]
    for (stage, table, operation), (first, second) in sorted(rows.items(), key=lambda kv: (STAGES.index(kv[0][0]),
                                                                                          -kv[1][0])):
        lines.append(f"| {stage} | {table} | {operation} | {first:.3f} | {second:.3f} |")
    return lines + [""]

