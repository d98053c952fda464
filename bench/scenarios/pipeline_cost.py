"""Cost per ingested event, following it through every stage, with 100 audiences defined.

Quick mode: 40 profiles and 200 measured messages; FULL=1: 200 profiles and 1,000 messages.

On an in-process moto account built from template.yaml (bench.harness): a shop's traffic
(bench.workload: 15% identify, 15% page, 70% track) is sent one HTTP request per message
(analytics.js style) through the real ingest handler; every 100 requests the streams are
drained like event source mappings (BatchSize 100): EventsTable -> profile_processor,
ProfilesTable -> audience_evaluator, MembershipsTable -> audience_router. A warm-up phase
creates the profiles (first visits, some anonymous then identified: merges); the measured
phase is steady traffic from known users. The project clock starts at a fixed moment so
counts repeat run to run.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.report import Figure

ANCHOR = datetime(2030, 1, 1, 12, tzinfo=UTC)
AUDIENCES = 100
PRICES_DATE = "2026-11-23"
# Public list prices (us-east-1, on-demand) as known on PRICES_DATE; check the AWS pricing pages.
PRICES = {
    "dynamodb_wru": 0.625 / 1e6, "dynamodb_rru": 0.125 / 1e6, "lambda_request": 0.20 / 1e6,
    "lambda_gb_second_arm64": 0.0000133334, "eventbridge_event": 1.00 / 1e6, "sqs_request": 0.40 / 1e6,
    "sfn_transition": 0.025 / 1000, "http_api_request": 1.00 / 1e6, "cloudwatch_logs_gb": 0.50,
}
LAMBDA_GB = 0.5  # template.yaml Globals MemorySize 512
STAGES = ["ingest", "profile_processor", "audience_evaluator", "audience_router"]


def _drive(lambdas, taps, messages, workload) -> None:
    def drain():
        moved = True
        while moved:
            moved = False
            for function, tap in taps:
                for batch in tap.batches(100):
                    lambdas.invoke(function, batch)
                    moved = True

    for i, message in enumerate(messages):
        response = lambdas.invoke("ingest", workload.api_event(message["type"], message))
        if response["statusCode"] != 200:
            raise AssertionError(f"ingest refused a benchmark message: {response}")
        if i % 100 == 99:
            drain()
    drain()


def run(context) -> list[Figure]:
    from bench import workload
    from bench.harness import Lambdas, StreamTap, moto_account
    from engage.audiences import parse_definition, runtime, store

    profiles, events = (200, 1000) if context.full else (40, 200)
    evaluations = {"n": 0}
    original = runtime.evaluate

    def counting(*args, **kwargs):  # counts what the runtime evaluates, changes nothing
        evaluations["n"] += 1
        return original(*args, **kwargs)

    with moto_account(now=ANCHOR) as made:
        for spec in workload.audiences(AUDIENCES):
            store.create("acme", parse_definition(spec).to_dict())
        lambdas = Lambdas()
        taps = [("profile_processor", StreamTap(made["tables"]["EventsTable"])),
                ("audience_evaluator", StreamTap(made["tables"]["ProfilesTable"])),
                ("audience_router", StreamTap(made["tables"]["MembershipsTable"]))]
        traffic = workload.Traffic(profiles)
        _drive(lambdas, taps, traffic.warm_up(ANCHOR - timedelta(days=20), ANCHOR - timedelta(days=10)), workload)
        lambdas.reset()
        runtime.evaluate = counting
        try:
            _drive(lambdas, taps, traffic.steady(events, ANCHOR - timedelta(days=10), ANCHOR), workload)
        finally:
            runtime.evaluate = original
    return _figures(context, lambdas, events, profiles, evaluations["n"])


def _figures(context, lambdas, events: int, profiles: int, evaluations: int) -> list[Figure]:
    from bench.harness import PLATFORM_LOG_BYTES

    section = f"Cost per ingested event ({AUDIENCES} audiences, {profiles} profiles, steady traffic)"
    basis = f"{events} messages (15% identify, 15% page, 70% track) one request each, streams in batches of 100"
    figures = []
    total = lambdas.total()
    for stage in STAGES:
        stats = lambdas.stats[stage]
        usage = stats.usage
        figures += [
            Figure(section, f"{stage}: DynamoDB requests per event", usage.count("dynamodb") / events, "requests",
                   f"counted by bench.meter; {basis}", counted=True),
            Figure(section, f"{stage}: write units per event", usage.write_units / events, "WRU",
                   "from item sizes as on-demand bills (1 KB; transactions x2; GSIs; refused conditional writes)",
                   counted=True),
            Figure(section, f"{stage}: read units per event", usage.read_units / events, "RRU",
                   "from item sizes (4 KB strongly consistent, half for eventually consistent)", counted=True),
            Figure(section, f"{stage}: invocations per event", stats.invocations / events, "invocations",
                   "one per HTTP request; one per stream batch of <= 100 records", counted=True),
            Figure(section, f"{stage}: own time per event", usage.own_seconds / events * 1e3, "ms",
                   "wall time minus time inside AWS SDK calls (bench.meter own_seconds), this machine"),
        ]
    stream = lambdas.total(["profile_processor", "audience_evaluator"]).usage
    figures += [
        Figure(section, "stream path (processor + evaluator): DynamoDB requests per event",
               stream.count("dynamodb") / events, "requests", "counted; the two stream stages together",
               counted=True),
        Figure(section, "all stages: DynamoDB requests per event", total.usage.count("dynamodb") / events,
               "requests", "counted", counted=True),
        Figure(section, "audience evaluations per event", evaluations / events, "evaluations",
               f"calls of engage.audiences.evaluate by the runtime, of {AUDIENCES} audiences defined", counted=True),
        Figure(section, "EventBridge PutEvents requests per event", total.usage.count("events", "PutEvents") / events,
               "requests", "router calls, up to 10 entries each", counted=True),
        Figure(section, "EventBridge events per event", total.usage.bus_events / events, "events",
               "Audience Entered/Exited entries published (EventBridge bills each)", counted=True),
        Figure(section, "SQS requests per event", total.usage.count("sqs") / events, "requests", "counted",
               counted=True),
        Figure(section, "Step Functions requests per event", total.usage.count("stepfunctions") / events, "requests",
               "this workload defines no journey (journeys are priced per enrollment in their own section): no executions, no state transitions", counted=True),
        Figure(section, "log bytes per event", total.log_bytes / events, "bytes",
               "powertools log lines and EMF metrics written by the handlers, 26 bytes of metadata per log event, and "
               f"Lambda's START, END and REPORT lines per invocation, {PLATFORM_LOG_BYTES} bytes "
               "(bench.harness; CloudWatch Logs ingestion)"),
    ]
    context.extra.append(_cost_table(lambdas, events))
    return figures


def _cost_table(lambdas, events: int) -> tuple[str, list[str]]:
    total = lambdas.total()
    usage = total.usage
    per = 1e6 / events  # scale the measured run to one million events
    own_gb_s = usage.own_seconds * LAMBDA_GB
    # Modelled billed duration: own time at 512 MB's CPU share (a full vCPU at 1,769 MB) plus
    # an assumed 5 ms round trip per AWS request the function waits on.
    modelled_gb_s = (usage.own_seconds * 1769 / 512 + sum(usage.requests.values()) * 0.005) * LAMBDA_GB
    requests_http = lambdas.stats["ingest"].invocations
    lines_ = [
        ("DynamoDB write request units", usage.write_units * per, PRICES["dynamodb_wru"]),
        ("DynamoDB read request units", usage.read_units * per, PRICES["dynamodb_rru"]),
        ("Lambda requests", total.invocations * per, PRICES["lambda_request"]),
        ("Lambda GB-s (measured own time x 0.5 GB)", own_gb_s * per, PRICES["lambda_gb_second_arm64"]),
        ("API Gateway HTTP API requests", requests_http * per, PRICES["http_api_request"]),
        ("EventBridge custom events (entries)", usage.bus_events * per, PRICES["eventbridge_event"]),
        ("SQS requests", usage.count("sqs") * per, PRICES["sqs_request"]),
        ("Step Functions state transitions", 0, PRICES["sfn_transition"]),
        ("CloudWatch Logs ingestion (GB)", total.log_bytes * per / 1e9, PRICES["cloudwatch_logs_gb"]),
    ]
    out = [f"Public list prices as known on {PRICES_DATE} (us-east-1, on-demand, arm64; DynamoDB after the",
           "Nov 2024 reduction); check the AWS pricing pages. Quantities are this run's counted usage scaled to",
           "one million events; free tiers, storage and DynamoDB Streams reads by Lambda (free) are not included.",
           "", "| item | quantity per 1M events | unit price (USD) | USD per 1M events | per 1,000 events |",
           "| --- | ---: | ---: | ---: | ---: |"]
    total_usd = 0.0
    for name, quantity, price in lines_:
        usd = quantity * price
        total_usd += usd
        out.append(f"| {name} | {quantity:,.1f} | {price:.10g} | {usd:,.2f} | {usd / 1000:.5f} |")
    modelled = total_usd - own_gb_s * per * PRICES["lambda_gb_second_arm64"] + \
        modelled_gb_s * per * PRICES["lambda_gb_second_arm64"]
    out += [f"| **total (own-time basis)** | | | **{total_usd:,.2f}** | {total_usd / 1000:.5f} |", "",
            (f"Lambda compute above counts only the measured own time (wall minus AWS-call time) on this machine. "
            f"Billed duration also includes waiting on AWS and runs at 512 MB's CPU share: modelled as own time "
            f"x 1769/512 + 5 ms per AWS request ({modelled_gb_s * per:,.0f} GB-s per 1M events), the total is "
            f"**{modelled:,.2f} USD per 1M events** (an estimate with those two assumptions)."), "",
            *_comparison(modelled),
            ]
    return ("Cost model: USD per million events", out)


def _comparison(modelled_per_million: float) -> list[str]:
    """The same volume on hosted products, from their public list prices (different billing basis)."""
    users, events_per_user = 10_000, 100  # 1M events a month
    ours = modelled_per_million * users * events_per_user / 1e6
    return [
        (f"For scale (list prices, not a like-for-like claim): {users:,} users sending {events_per_user} events a "
        f"month is 1M events a month, about **{ours:,.2f} USD a month** here (modelled total above, AWS usage only). "
        "Segment bills per monthly tracked user, not per event: its Team plan is listed at 120 USD a month "
        "including 10,000 MTUs, then 0.012 USD per MTU (public plan table, as reproduced by billing vendors' "
        "Segment templates), and Engage (audiences, journeys) is sold only on Business plans with quoted prices. "
        "Customer.io bills per profile: Essentials overage is 0.009 USD per profile a month "
        "(docs.customer.io, How we bill), i.e. 90 USD for 10,000 profiles before the plan fee. "
        f"Prices as read on {PRICES_DATE}."),
    ]
