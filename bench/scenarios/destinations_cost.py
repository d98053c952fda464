"""Destinations in batch mode (issue 14): membership changes through the sync path, counted and timed.

Quick mode: 5,000 membership changes (one run); --full: 100,000 (ten runs).

On an in-process moto account built from template.yaml (bench.harness), a manual audience is connected
to a batch webhook destination (signed, `batch_size` 100, hourly schedule) whose URL is a real HTTP
server on loopback (tests.receiver, answering 200). The changes are MembershipsTable stream records in
the shape Lambda hands DestinationRouterFunction (typed NEW_AND_OLD images, the membership item's
`identity` map as the audience engine writes it), in batches of 100 (the mapping's BatchSize): writing
100,000 membership items through moto first would time moto, not the sync path. Each block of 10,000
changes is 8,000 profiles entering and 1,000 entering then exiting (2,000 changes), followed by one
scheduled run (DestinationBatchFunction, as the destination's Scheduler schedule invokes it): so each
run sends 9,000 changes, the 1,000 entered-then-exited ones once each, as exited (coalescing).

Counted with bench.meter (every botocore call: DynamoDB with capacity units from item sizes, SQS,
Scheduler) and the receiver (HTTP posts). Own time is wall time minus time inside AWS SDK calls and
minus time inside the HTTP posts (the customer's endpoint, served in this process): the project's own
code on one core - routing, the change log writes' building, reading pages back, batching, signing.
"""
from __future__ import annotations

import os
import time

from bench.report import Figure
from bench.scenarios.pipeline_cost import ANCHOR, PRICES, PRICES_DATE

BLOCK = 10_000  # changes between two scheduled runs (a smaller total is one run)
QUICK = 5_000  # quick mode: one run (moto takes ~10 ms a request on this machine; 100,000 under --full)
SECRET = "whsec-bench-0123456789"
FIFO_SQS_REQUEST = 0.50 / 1e6
SCHEDULER_INVOCATION = 1.00 / 1e6  # EventBridge Scheduler, after the free 14M a month
# Latencies assumed for Lambda's billed duration (the wait on AWS and the endpoint is billed, not measured
# here): a DynamoDB request 5 ms, an HTTP post to the customer's endpoint 100 ms.
ASSUMED_DYNAMODB_MS, ASSUMED_POST_MS = 5, 100
MEMORY_GB = {"destination_router": 0.5, "destination_batch": 1.0}  # template.yaml


def _records(start: int, count: int) -> list[dict]:
    """`count` changes of one block as DynamoDB stream records: 80% single enters, 10% of profiles
    entering then exiting (their exit after every enter of the block, as a later evaluation writes it)."""
    from boto3.dynamodb.types import TypeSerializer

    typed = TypeSerializer()
    at = ANCHOR.isoformat().replace("+00:00", "Z")

    def image(n: int, member: bool, version: int) -> dict:
        item = {"pk": f"acme|p{n}", "sk": "vip", "audience_pk": "acme|vip", "space_id": "acme",
                "profile_id": f"p{n}", "audience_key": "vip", "member": member, "entered_at": at,
                "updated_at": at, "version": version,
                "identity": {"user_id": f"user-{n}", "anonymous_id": None, "email": f"user{n}@example.com"}}
        if not member:
            item["exited_at"] = at
        return {k: typed.serialize(v) for k, v in item.items()}

    flips = count // 10
    singles = count - 2 * flips
    profiles = range(start, start + singles + flips)
    out = []
    for n in profiles:
        out.append({"NewImage": image(n, True, 1)})
    for n in list(profiles)[-flips:]:
        out.append({"OldImage": image(n, True, 1), "NewImage": image(n, False, 2)})
    return [{"eventID": f"e{start}-{i}", "eventName": "MODIFY" if "OldImage" in r else "INSERT",
             "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
             "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/Memberships/stream/x",
             "dynamodb": {"SequenceNumber": f"{start + i:021d}", "StreamViewType": "NEW_AND_OLD_IMAGES",
                          "Keys": {"pk": r["NewImage"]["pk"], "sk": r["NewImage"]["sk"]}, **r}}
            for i, r in enumerate(out)]


def run(context) -> list[Figure]:
    return measure_changes(100_000 if context.full else QUICK)


def measure_changes(total: int) -> list[Figure]:
    from bench.harness import Lambdas, moto_account
    from engage import config
    from engage.destinations import senders
    from tests.integration.audience_support import call_api
    from tests.receiver import Receiver

    receiver = Receiver()
    post_seconds = [0.0]
    original_post = senders.post_json

    def timed_post(*args, **kwargs):  # times the endpoint's share, changes nothing
        started = time.perf_counter()
        try:
            return original_post(*args, **kwargs)
        finally:
            post_seconds[0] += time.perf_counter() - started

    try:
        with moto_account(now=ANCHOR) as made:
            os.environ.update({"DESTINATIONS_TABLE": made["tables"]["DestinationsTable"],
                               "DESTINATIONS_QUEUE_URL": made["queues"]["DestinationsQueue"],"ENGAGE_ALLOW_INTERNAL_HOSTS": "true",  # the receiver is on loopback
                               "DESTINATION_SECRETS_PREFIX": "/bench/destinations",
                               # the management API's (template.yaml gives the function's ARN and role)
                               "DESTINATION_BATCH_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:batch",
                               "DESTINATION_SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/scheduler"})
            config.settings.cache_clear()
            if call_api("POST", "/v1/audiences", {"key": "vip", "name": "VIP", "kind": "manual"})[0] != 201:
                raise AssertionError("the benchmark audience was refused")
            status, body = call_api("POST", "/v1/destinations", {
                "key": "crm", "type": "webhook", "mode": "batch", "audiences": ["vip"],
                "schedule": {"expression": "rate(1 hour)"},
                "config": {"url": receiver.url + "/engage", "secret": SECRET, "batch_size": 100}})
            if status != 201:
                raise AssertionError(f"the benchmark destination was refused: {body}")
            lambdas = Lambdas()
            lambdas.invoke("destination_router", {"Records": []})  # warm imports (not counted)
            lambdas.reset()
            senders.post_json = timed_post
            runs = []
            for start in range(0, total, BLOCK):
                records = _records(start, min(BLOCK, total - start))
                for at in range(0, len(records), 100):
                    answer = lambdas.invoke("destination_router", {"Records": records[at:at + 100]})
                    if answer["batchItemFailures"]:
                        raise AssertionError(f"the router failed records: {answer}")
                runs.append(lambdas.invoke("destination_batch", {"space_id": "acme", "destination": "crm"}))
            senders.post_json = original_post
    finally:
        senders.post_json = original_post
        receiver.close()
    return _figures(total, lambdas, runs, receiver, post_seconds[0])


def _figures(total: int, lambdas, runs: list[dict], receiver, post_seconds: float) -> list[Figure]:
    from bench.meter import Usage

    delivered = sum(r.get("delivered", 0) for r in runs)
    sent = [c for r in receiver.requests if r["status"] < 300 for c in r["body"]["batch"]]
    flips = total // 10
    exits = sum(1 for c in sent if c["event"] == "Audience Exited")
    if delivered != len(sent) or len(sent) != total - flips or exits != flips or len({c["id"] for c in sent}) != len(sent):
        raise AssertionError(f"deliveries do not add up: {delivered} delivered, {len(sent)} received, {exits} exits")
    router, batch = lambdas.stats["destination_router"], lambdas.stats["destination_batch"]
    usage = Usage()
    usage += router.usage
    usage += batch.usage
    own = usage.own_seconds - post_seconds
    posts = len(receiver.requests)
    dynamodb, sqs = usage.count("dynamodb"), usage.count("sqs")
    scheduler_calls = usage.count("scheduler")
    section = f"Destinations: batch mode, {total:,} membership changes through the sync path"
    basis = (f"{total:,} changes as membership stream records, routed 100 a batch, one scheduled run per "
             f"{BLOCK:,} changes ({len(runs)} runs); {delivered:,} changes delivered (10% of profiles entered "
             "then exited between runs: sent once)")
    per = 1e6 / delivered
    lambda_requests = router.invocations + batch.invocations
    modelled_gb_s = sum(
        (stats.usage.own_seconds - (post_seconds if name == "destination_batch" else 0)
         + stats.usage.count("dynamodb") * ASSUMED_DYNAMODB_MS / 1e3
         + (posts * ASSUMED_POST_MS / 1e3 if name == "destination_batch" else 0)) * MEMORY_GB[name]
        for name, stats in (("destination_router", router), ("destination_batch", batch)))
    lines = {
        "DynamoDB write units": usage.write_units * per * PRICES["dynamodb_wru"],
        "DynamoDB read units": usage.read_units * per * PRICES["dynamodb_rru"],
        "SQS requests": sqs * per * FIFO_SQS_REQUEST,
        "Scheduler invocations": len(runs) * per * SCHEDULER_INVOCATION,
        "Lambda requests": lambda_requests * per * PRICES["lambda_request"],
        "Lambda GB-s (modelled)": modelled_gb_s * per * PRICES["lambda_gb_second_arm64"],
        "CloudWatch Logs": (router.log_bytes + batch.log_bytes) * per / 1e9 * PRICES["cloudwatch_logs_gb"],
    }
    usd = sum(lines.values())
    breakdown = ", ".join(f"{name} {value:.3f}" for name, value in lines.items())
    return [
        Figure(section, "changes per second through the sync path on one core (own time)", total / own,
               "changes/s", f"{basis}; own time = wall time minus time inside AWS SDK calls (moto) and inside "
               f"the HTTP posts to the loopback receiver ({own:.1f} s of own time), this machine",
               higher_is_better=True),
        Figure(section, "deliveries per second on one core (own time)", delivered / own, "deliveries/s",
               "changes delivered (after coalescing) per second of the same own time", higher_is_better=True),
        Figure(section, "DynamoDB requests per delivered change", dynamodb / delivered, "requests",
               f"counted by bench.meter: {dict(sorted((op, n) for (svc, op), n in usage.requests.items() if svc == 'dynamodb'))}"
               "; the change log's conditional PutItem per change, the run's Query pages and a conditional "
               "DeleteItem per delivered entry", counted=True),
        Figure(section, "DynamoDB write units per delivered change", usage.write_units / delivered, "WRU",
               "from item sizes as on-demand bills (bench.meter)", counted=True),
        Figure(section, "DynamoDB read units per delivered change", usage.read_units / delivered, "RRU",
               "strongly consistent Query pages of the change log", counted=True),
        Figure(section, "SQS requests per delivered change", sqs / delivered, "requests",
               "batch mode queues nothing (realtime's FIFO queue is not on this path)", counted=True),
        Figure(section, "Scheduler requests per delivered change", (scheduler_calls + len(runs)) / delivered,
               "requests", f"{scheduler_calls} Scheduler API calls (the schedule is made once, at create) + "
               f"{len(runs)} schedule invocations (one per run)", counted=True),
        Figure(section, "HTTP posts per delivered change", posts / delivered, "requests",
               "posts to the loopback receiver, 100 changes each (batch_size), signed", counted=True),
        Figure(section, "changes sent per entered-then-exited profile", (len(sent) - (total - 2 * flips)) / flips,
               "changes", f"{flips:,} profiles entered then exited before the run: each sent once, as exited",
               counted=True),
        Figure(section, "USD per million changes delivered", usd, "USD",
               f"list prices (us-east-1, on-demand, arm64) as of {PRICES_DATE}: DynamoDB 0.625/M WRU and 0.125/M "
               "RRU, FIFO SQS 0.50/M, Scheduler 1.00/M invocations, Lambda 0.20/M requests and 0.0000133334/GB-s, "
               f"Logs 0.50/GB; Lambda duration modelled as own time + {ASSUMED_DYNAMODB_MS} ms per DynamoDB "
               f"request + {ASSUMED_POST_MS} ms per HTTP post (router 512 MB, batch 1 GB). Lines: {breakdown}"),
    ]
