"""The real handlers on an in-process moto account built from template.yaml, metered.

`moto_account()` gives the same account the tests' `aws` fixture builds (localcloud.template
.create_in_moto); `Lambdas.invoke` calls functions/<name>/app.py's handler the way Lambda
does and meters it (bench.meter); `StreamTap` hands out a table's stream records in
batches, as an event source mapping would. Stream reads happen outside `measure()`:
Lambda's stream polling is not billed, and it is not our code.
"""
from __future__ import annotations

import io
import os
import sys
from collections import defaultdict
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime

import boto3
from moto import mock_aws

from bench.meter import Usage, measure
from localcloud import template

REGION = "us-east-1"
SPACE = ("acme", "acme-write-key", "acme-access-token")
# engage.config settings of the caches that expire on real time, and the lifetime a bench account gives them.
CACHE_SETTINGS = ("CREDENTIAL_CACHE_SECONDS",)
PINNED_CACHE_SECONDS = 10 * 24 * 3600


def reset_caches() -> None:
    """Every warm-container cache of the domain package (a new account means a cold start)."""
    from engage.audiences import backfill, due, router, runtime, store
    from tests.conftest import reset_engage_caches

    reset_engage_caches()
    backfill.reset()
    store.clear_cache()
    router.reset()
    runtime.reset()
    due.reset()


@contextmanager
def moto_account(now: datetime | None = None):
    """A fresh moto account with the template's tables, queues and bus, the functions' env set,
    and space `acme` created. `now` pins the project clock's start (engage.clock) so
    day buckets, and so item sizes and counts, are the same on every run."""
    from engage import clock, spaces

    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "POWERTOOLS_TRACE_DISABLED": "true",
                       "POWERTOOLS_DEV": "false", "POWERTOOLS_METRICS_NAMESPACE": "Engage"})
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(var, None)
    try:
        with mock_aws():
            made = template.create_in_moto(REGION)
            os.environ.update(made["env"])
            # Warm-container caches expire on real (monotonic) time: a slower run would reload them more
            # often and count more requests. Within one bench account they never expire (docs/benchmarks.md).
            os.environ.update({name: str(PINNED_CACHE_SECONDS) for name in CACHE_SETTINGS})
            reset_caches()
            if now is not None:
                clock.set_to(now)
            spaces.create_space(SPACE[0], "Acme", write_key=SPACE[1], access_token=SPACE[2])
            yield made
    finally:
        reset_caches()
        os.environ.clear()
        os.environ.update(saved)


class CountingStream(io.TextIOBase):
    """Swallows log output, counting its bytes (CloudWatch Logs bills ingested bytes)."""

    def __init__(self):
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        return len(text)


@dataclass
class FunctionStats:
    invocations: int = 0
    usage: Usage = field(default_factory=Usage)
    log_bytes: int = 0
    # Lambda bills each invocation's duration rounded up to the next millisecond.
    billed_own_ms: int = 0


class Lambdas:
    """Invoke the project's handlers in-process, metering each invocation by function."""

    def __init__(self):
        from engage.observability import logger

        self.stats: dict[str, FunctionStats] = defaultdict(FunctionStats)
        self._log = CountingStream()
        self._logger = logger
        self._swap_log_stream()

    def _swap_log_stream(self) -> None:
        for handler in self._logger.handlers:  # powertools bound sys.stdout when it was created
            if hasattr(handler, "setStream"):
                handler.setStream(self._log)

    def invoke(self, function: str, event: dict):
        from tests.integration.audience_support import LambdaContext, handler

        lambda_handler = handler(function)
        self._swap_log_stream()
        before = self._log.bytes
        with redirect_stdout(self._log), measure() as usage:  # EMF metrics are printed
            result = lambda_handler(event, LambdaContext(function_name=function))
        stats = self.stats[function]
        stats.invocations += 1
        stats.usage += usage
        stats.log_bytes += self._log.bytes - before
        stats.billed_own_ms += int(-(-usage.own_seconds * 1000 // 1))
        return result

    def total(self, functions: list[str] | None = None) -> FunctionStats:
        out = FunctionStats()
        for name, stats in self.stats.items():
            if functions is None or name in functions:
                out.invocations += stats.invocations
                out.usage += stats.usage
                out.log_bytes += stats.log_bytes
                out.billed_own_ms += stats.billed_own_ms
        return out

    def reset(self) -> None:
        self.stats.clear()


class StreamTap:
    """A table's DynamoDB stream read incrementally, handed out in batches like an event source mapping."""

    def __init__(self, table_name: str):
        self.arn = boto3.client("dynamodb", region_name=REGION).describe_table(
            TableName=table_name)["Table"]["LatestStreamArn"]
        # botocore routes stream calls to an account host moto does not serve (local-cloud findings)
        self.client = boto3.client("dynamodbstreams", region_name=REGION,
                                   endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com")
        self.iterators: dict[str, str] = {}
        self.pending: list[dict] = []

    def _poll(self) -> None:
        shards = self.client.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id not in self.iterators:
                self.iterators[shard_id] = self.client.get_shard_iterator(
                    StreamArn=self.arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while True:
                page = self.client.get_records(ShardIterator=self.iterators[shard_id], Limit=1000)
                self.iterators[shard_id] = page["NextShardIterator"]
                for record in page["Records"]:
                    record["eventSourceARN"] = self.arn
                    moment = record["dynamodb"].get("ApproximateCreationDateTime")
                    if isinstance(moment, datetime):  # Lambda sends epoch seconds
                        record["dynamodb"]["ApproximateCreationDateTime"] = int(moment.timestamp())
                    self.pending.append(record)
                if not page["Records"]:
                    break

    def batches(self, size: int = 100):
        """Everything written since the last call, in order, `size` records a batch."""
        self._poll()
        while self.pending:
            batch, self.pending = self.pending[:size], self.pending[size:]
            yield {"Records": batch}


def quiet_stdout():
    return redirect_stdout(CountingStream())


def python_info() -> str:
    return sys.version.split()[0]
