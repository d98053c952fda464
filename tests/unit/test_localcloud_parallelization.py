"""ParallelizationFactor on the local cloud's stream poller: as on Lambda, a shard's records go to lanes
by partition key, lanes run at the same time, and one key's records stay in stream order."""
from __future__ import annotations

import threading
from collections import defaultdict

from localcloud.pollers import DynamoDBStreamPoller
from localcloud.runtime import Invocation


class Recorder:
    """A runtime whose invocations record their records and wait until `overlap` of them run at once."""

    def __init__(self, overlap: int):
        self.batches: list[list[tuple[str, int]]] = []
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(overlap, timeout=10)

    def invoke(self, function_arn, event, origin=None) -> Invocation:
        self.barrier.wait()  # times out (BrokenBarrierError) unless the lanes really run concurrently
        with self.lock:
            self.batches.append([(r["dynamodb"]["Keys"]["pk"]["S"], int(r["dynamodb"]["SequenceNumber"]))
                                 for r in event["Records"]])
        return Invocation(payload={"batchItemFailures": []})


def poller(factor: int, runtime) -> DynamoDBStreamPoller:
    mapping = {"UUID": "0123456789", "FunctionArn": "fn", "EventSourceArn": "arn:aws:dynamodb:us-east-1:1:table/t/stream/x",
               "BatchSize": 100, "ParallelizationFactor": factor, "FunctionResponseTypes": ["ReportBatchItemFailures"]}
    made = DynamoDBStreamPoller(mapping, cloud=None, runtime=runtime)
    made._hash_key = "pk"  # the table's partition key (read from moto's table otherwise)
    return made


def records(keys: list[str]) -> list[dict]:
    return [{"eventID": str(n), "dynamodb": {"Keys": {"pk": {"S": key}, "sk": {"S": str(n)}},
                                             "SequenceNumber": str(n)}} for n, key in enumerate(keys)]


def test_lanes_run_concurrently_and_keep_each_keys_order():
    keys = [f"u:{n % 7}" for n in range(60)]  # 7 keys interleaved, 60 records
    lanes = {poller(10, None)._lane(r) for r in records(keys)}
    runtime = Recorder(overlap=len(lanes))
    poller(10, runtime).deliver(records(keys))
    assert len(runtime.batches) == len(lanes) > 1  # one invocation per lane, all at the same time
    seen = defaultdict(list)
    for batch in runtime.batches:
        assert len({poller(10, None)._lane(r) for r in records([k for k, _ in batch])}) == 1  # one lane each
        for key, sequence in batch:
            seen[key].append(sequence)
    # every record once, each key's records in stream order, each key in one lane only
    assert sorted(s for batch in runtime.batches for _, s in batch) == list(range(60))
    assert all(sequences == sorted(sequences) for sequences in seen.values())
    assert sum(len({k for k, _ in b} & {key}) for b in runtime.batches for key in seen) == len(seen)


def test_factor_one_is_one_invocation_in_stream_order():
    runtime = Recorder(overlap=1)
    poller(1, runtime).deliver(records([f"k{n % 3}" for n in range(10)]))
    assert [s for _, s in runtime.batches[0]] == list(range(10)) and len(runtime.batches) == 1
