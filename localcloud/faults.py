"""Fault injection for the local cloud's Lambda workers (never part of a deployed function).

`engage dev --faults '<json>'` (or ENGAGE_FAULTS in the local cloud's environment) hands this
configuration to the worker processes of the chosen functions (ENGAGE_FAULTS in their environment,
set by `localcloud.runtime`); `localcloud/worker.py` calls `install()` before it imports the handler.
Nothing here is imported by engage/ or by a function's code.

Faults are injected at the two levels where AWS faults reach a Lambda function's code:

- **HTTP attempts** (botocore's `Endpoint._send`, below botocore's retry handler): a share `rate` of
  request attempts fail as AWS fails them: `throttle` (DynamoDB ProvisionedThroughputExceededException,
  ThrottlingException elsewhere), `server_error` (InternalServerError / InternalException, HTTP 500),
  `timeout` (connect timeout: the request never arrived) and `timeout_after` (read timeout: the request
  *was applied*, its answer lost). botocore retries them as it does on AWS (the SDK's retry mode and
  attempts are the function's own), so only what outlasts the SDK's retries reaches the handler, and a
  retried `timeout_after` write meets its own first attempt (a conditional write then fails its condition).
- **SDK calls** (`BaseClient._make_api_call`, above the retries): a share `call_rate` of calls get what
  no SDK retry hides: `exhausted` (a throttling error after the SDK's retries), `partial` (PutEvents
  entries refused with ErrorCode, BatchWriteItem/BatchGetItem items or keys left unprocessed), and
  `conflict` (TransactWriteItems cancelled for a TransactionConflict).
- **Handler crashes**: after a write call *succeeded*, with probability `crash_rate`, the process dies
  (`crash`: os._exit, Lambda reports Runtime.ExitError and the sandbox is gone) or the handler gets an
  unexpected exception (`raise`), i.e. an invocation that fails mid-batch after some of its writes.
- **Outages**: while the file `<log_dir>/outage` exists, every call to an operation it lists (one per
  line, e.g. `PutEvents`) fails as `exhausted`: a dependency down long enough for Lambda to give up on a
  stream batch (retries, bisection, then the on-failure destination and the parker).

Each injected fault is appended to `<log_dir>/faults-<pid>.jsonl` (kind, function, operation, and for an
SDK call's fault, a crash or a raise the DynamoDB table of the call or of the write it followed), flushed
before it takes effect, so the test counts them even when the process dies. Decisions come from a
`random.Random` seeded with (seed, function, worker ordinal): the same seed gives the same fault stream
per worker; which invocation meets it depends on how the local cloud batched records.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "ENGAGE_FAULTS"  # the configuration (JSON), in the local cloud's and the chosen workers' environment
FUNCTION_ENV = "ENGAGE_FAULTS_FUNCTION"  # the worker's function (template logical id)
ORDINAL_ENV = "ENGAGE_FAULTS_WORKER"  # which worker of its function this process is (for the seed)
# The functions of the event pipeline (template logical ids) and what hangs off it: journeys (enroller,
# events, the state machines' steps), the sender, destinations (router, deliverer, batch runs, trait router).
# Operator tooling (parker, replay) and the management API stay fault-free by default (see
# docs/reliability.md, "Fault injection").
PIPELINE = ("IngestFunction", "ProfileProcessorFunction", "AudienceEvaluatorFunction", "AudienceRouterFunction",
            "AudienceSweeperFunction", "AudienceSweepWorkerFunction", "AudienceBackfillFunction",
            "JourneyEnrollerFunction", "JourneyEventsFunction", "JourneyStepsFunction", "MessageSenderFunction",
            "DestinationRouterFunction", "DestinationDelivererFunction", "DestinationBatchFunction",
            "DestinationTraitRouterFunction")
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem", "PutEvents",
                    "SendMessage", "SendMessageBatch", "StartExecution"})
ATTEMPT_KINDS = ("throttle", "server_error", "timeout", "timeout_after")
CALL_KINDS = ("exhausted", "partial", "conflict")
# AWS's error codes per service (the JSON protocols' __type) for throttling and server errors.
THROTTLE = {"dynamodb": "ProvisionedThroughputExceededException", "sqs": "RequestThrottled"}
SERVER_ERROR = {"dynamodb": "InternalServerError", "eventbridge": "InternalException", "sqs": "InternalError",
                "sfn": "InternalServerError"}


@dataclass
class FaultConfig:
    seed: int = 7
    rate: float = 0.05  # share of HTTP attempts that fail (ATTEMPT_KINDS, equally likely)
    call_rate: float = 0.01  # share of SDK calls that fail past the SDK's retries (CALL_KINDS that apply)
    crash_rate: float = 0.01  # share of successful write calls after which the handler crashes or raises
    functions: tuple[str, ...] = PIPELINE  # template logical ids whose workers get faults
    log_dir: str = ""
    backoff_scale: float = 1.0  # botocore's retry sleeps are multiplied by this (tests: shorter waits)
    kinds: tuple[str, ...] = (*ATTEMPT_KINDS, *CALL_KINDS, "crash", "raise")  # the kinds allowed

    @classmethod
    def parse(cls, text: str) -> FaultConfig:
        """The JSON configuration (any subset of the fields); a clear error for anything else."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{ENV}: not JSON ({error})") from error
        if not isinstance(data, dict):
            raise ValueError(f"{ENV}: a JSON object such as {{\"rate\": 0.05, \"seed\": 7}}")  # noqa: TRY004
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{ENV}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        for name in ("rate", "call_rate", "crash_rate"):
            value = getattr(config, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{ENV}.{name}: a share between 0 and 1, not {value!r}")
        allowed = {*ATTEMPT_KINDS, *CALL_KINDS, "crash", "raise"}
        if not set(config.kinds) <= allowed:
            raise ValueError(f"{ENV}.kinds: {sorted(set(config.kinds) - allowed)} unknown; known: {sorted(allowed)}")
        return config

    def to_json(self) -> str:
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()})


class InjectedHandlerError(RuntimeError):
    """The `raise` fault: an unexpected error in the handler right after a write succeeded."""


@dataclass
class Injector:
    config: FaultConfig
    function: str  # logical id
    rng: random.Random = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log_path: Path | None = None

    def __post_init__(self):
        ordinal = os.environ.get(ORDINAL_ENV, "0")
        self.rng = random.Random(f"{self.config.seed}:{self.function}:{ordinal}")
        if self.config.log_dir:
            self.log_path = Path(self.config.log_dir) / f"faults-{os.getpid()}.jsonl"

    # ------------------------------------------------------------ decisions
    def _draw(self, share: float, kinds: tuple[str, ...]) -> str | None:
        kinds = tuple(k for k in kinds if k in self.config.kinds)
        with self.lock:
            if not kinds or share <= 0 or self.rng.random() >= share:
                return None
            return self.rng.choice(kinds)

    def note(self, kind: str, service: str, operation: str, table: str | None = None) -> None:
        if self.log_path is None:
            return
        line = json.dumps({"kind": kind, "function": self.function, "service": service, "operation": operation,
                           "table": table, "at": time.time()})
        with self.lock, self.log_path.open("a") as out:
            out.write(line + "\n")
            out.flush()

    def outage(self, operation: str) -> bool:
        if not self.config.log_dir:
            return False
        try:
            listed = (Path(self.config.log_dir) / "outage").read_text().split()
        except OSError:
            return False
        return operation in listed

    # ------------------------------------------------------------ the two levels
    def on_attempt(self, endpoint, request, send):
        """One HTTP attempt (botocore retries what this raises or answers, as on AWS)."""
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        service, operation = _service_and_operation(endpoint, request)
        kind = self._draw(self.config.rate, ATTEMPT_KINDS)
        if kind is None:
            return send(request)
        self.note(kind, service, operation)
        if kind == "timeout":
            raise ConnectTimeoutError(endpoint_url=request.url)
        if kind == "timeout_after":
            send(request)  # applied; the answer never arrives
            raise ReadTimeoutError(endpoint_url=request.url)
        if kind == "throttle":
            code = THROTTLE.get(service, "ThrottlingException")
            return _error_response(request.url, 400, code, "Rate of requests exceeds the allowed throughput.")
        code = SERVER_ERROR.get(service, "InternalFailure")
        return _error_response(request.url, 500, code, "Internal server error")

    def on_call(self, client, operation: str, params: dict, call):
        """One SDK call, past botocore's retries."""
        from botocore.exceptions import ClientError

        service = client.meta.service_model.service_id.hyphenize()
        if self.outage(operation):
            self.note("outage", service, operation)
            raise ClientError(_throttled(service, operation), operation)
        kinds = ["exhausted"]
        if operation in ("PutEvents", "BatchWriteItem", "BatchGetItem"):
            kinds.append("partial")
        if operation == "TransactWriteItems":
            kinds.append("conflict")
        kind = self._draw(self.config.call_rate, tuple(kinds))
        table = params.get("TableName") if isinstance(params, dict) else None  # which table's call (or write)
        if kind is not None:
            self.note(kind, service, operation, table)
            if kind == "exhausted":
                raise ClientError(_throttled(service, operation), operation)
            if kind == "conflict":
                raise ClientError(_cancelled(len(params.get("TransactItems", []))), operation)
            result = _partial(self.rng, operation, params, call)
        else:
            result = call(params)
        if operation in WRITES:
            crash = self._draw(self.config.crash_rate, ("crash", "raise"))
            if crash == "crash":
                self.note("crash", service, operation, table)
                os._exit(1)  # the sandbox dies after the write: Lambda reports Runtime.ExitError
            if crash == "raise":
                self.note("raise", service, operation, table)
                raise InjectedHandlerError(f"injected handler error after {operation} succeeded")
        return result


def _service_and_operation(endpoint, request) -> tuple[str, str]:
    service = endpoint._endpoint_prefix if hasattr(endpoint, "_endpoint_prefix") else ""
    target = request.headers.get("X-Amz-Target", b"")
    target = target.decode() if isinstance(target, bytes) else str(target)
    operation = target.rsplit(".", 1)[-1] if target else request.method
    host = request.url.split("//", 1)[-1]
    if not service:
        service = "dynamodb" if "DynamoDB" in target else "eventbridge" if "AWSEvents" in target else \
            "sqs" if "AmazonSQS" in target else "sfn" if "AWSStepFunctions" in target else host.split(".")[0]
    return {"events": "eventbridge", "states": "sfn"}.get(service, service), operation


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


def _error_response(url: str, status: int, code: str, message: str):
    from botocore.awsrequest import AWSResponse

    body = json.dumps({"__type": code, "message": message}).encode()
    return AWSResponse(url, status, {"content-type": "application/x-amz-json-1.0",
                                     "x-amzn-requestid": "fault-injected", "x-amzn-query-error": f"{code};Sender"},
                       _Raw(body))


def _throttled(service: str, operation: str) -> dict:
    code = THROTTLE.get(service, "ThrottlingException")
    return {"Error": {"Code": code, "Message": f"Rate exceeded ({operation}, after the SDK's retries)"},
            "ResponseMetadata": {"HTTPStatusCode": 400, "MaxAttemptsReached": True, "RetryAttempts": 3}}


def _cancelled(items: int) -> dict:
    reasons = [{"Code": "None"} for _ in range(items)]
    if reasons:
        reasons[0] = {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    return {"Error": {"Code": "TransactionCanceledException",
                      "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
                                 f"[{', '.join(r['Code'] for r in reasons)}]"},
            "CancellationReasons": reasons, "ResponseMetadata": {"HTTPStatusCode": 400}}


def _partial(rng: random.Random, operation: str, params: dict, call) -> dict:
    """Part of a batch call refused the way AWS refuses it; the rest is applied."""
    if operation == "PutEvents":
        entries = params["Entries"]
        refused = {i for i in range(len(entries)) if rng.random() < 0.5} or {0}
        kept = [e for i, e in enumerate(entries) if i not in refused]
        answer = call({**params, "Entries": kept}) if kept else {"Entries": []}
        results = iter(answer["Entries"])
        merged = [{"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"} if i in refused
                  else next(results) for i in range(len(entries))]
        return {**answer, "FailedEntryCount": answer.get("FailedEntryCount", 0) + len(refused), "Entries": merged}
    writes = operation == "BatchWriteItem"
    unprocessed = "UnprocessedItems" if writes else "UnprocessedKeys"
    sent: dict[str, Any] = {}
    left: dict[str, list] = {}
    for table, request in params["RequestItems"].items():
        items = request if writes else request["Keys"]
        keep = [x for x in items if rng.random() >= 0.5]
        rest = [x for x in items if x not in keep]
        if keep:
            sent[table] = keep if writes else {**request, "Keys": keep}
        if rest:
            left[table] = rest
    answer = call({**params, "RequestItems": sent}) if sent else ({} if writes else {"Responses": {}})
    merged = dict(answer.get(unprocessed) or {})
    for table, rest in left.items():
        if writes:
            merged[table] = [*merged.get(table, []), *rest]
        else:
            request = {k: v for k, v in params["RequestItems"][table].items() if k != "Keys"}
            merged[table] = {**request, "Keys": [*merged.get(table, {}).get("Keys", []), *rest]}
    return {**answer, unprocessed: merged}


def install() -> Injector | None:
    """In a worker: wrap botocore's attempt and call paths when ENGAGE_FAULTS names this function."""
    text = os.environ.get(ENV)
    if not text:
        return None
    config = FaultConfig.parse(text)
    function = os.environ.get(FUNCTION_ENV, "")
    if function not in config.functions:
        return None
    injector = Injector(config, function)

    import botocore.client
    import botocore.endpoint

    original_send = botocore.endpoint.Endpoint._send
    original_call = botocore.client.BaseClient._make_api_call

    def _send(endpoint, request):
        return injector.on_attempt(endpoint, request, lambda r: original_send(endpoint, r))

    def _make_api_call(client, operation_name, api_params):
        return injector.on_call(client, operation_name, api_params,
                                lambda params: original_call(client, operation_name, params))

    botocore.endpoint.Endpoint._send = _send
    botocore.client.BaseClient._make_api_call = _make_api_call
    if config.backoff_scale != 1.0:
        botocore.endpoint.time = _ScaledSleep(config.backoff_scale)
    return injector


class _ScaledSleep:
    """botocore.endpoint's `time`, with retry sleeps scaled (the retry logic itself is untouched)."""

    def __init__(self, scale: float):
        self.scale = scale

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds * self.scale)

    def __getattr__(self, name: str):
        return getattr(time, name)
