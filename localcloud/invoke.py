"""`engage invoke FUNCTION -e events/FILE.json`: one function, one sample event, on the local cloud.

This project's `sam local invoke`, without Docker. The function runs where `make dev` runs it:
the invocation goes through the Lambda Invoke API of the local AWS endpoint (what
`aws lambda invoke` does), so it uses the deployed function's environment, tables and
streams, and what it writes flows on through the app like any other write.

Where it runs:
- `--endpoint-url URL` (or AWS_ENDPOINT_URL): the local cloud at that AWS endpoint;
- else a local cloud running on this machine's default port (127.0.0.1:$ENGAGE_AWS_PORT, 4566);
- else a throwaway local cloud started for this one invocation (its data is gone afterwards).

The samples in events/ describe one small world in the default space `local` (write key
`local-write-key`, access token `local-access-token`): the user `user-42` (email
ann@example.com, plan pro) and account `acct-9`, and the audiences `pro` (plan is pro) and
`vips` (manual). Before invoking, `seed()` makes that world exist, idempotently: it runs
the profile processor on events/profile_processor_batch.json (a redelivered batch changes
nothing) and creates the two audiences through the management API (an existing one is
left as it is). `--no-seed` skips it.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcloud import template

EVENTS = template.ROOT / "events"
SPACE, WRITE_KEY, ACCESS_TOKEN = "local", "local-write-key", "local-access-token"
SEED_AUDIENCES = (
    {"key": "pro", "name": "Pro", "kind": "dynamic", "entity": "users", "backfill": False,
     "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
    {"key": "vips", "name": "VIPs", "kind": "manual"},
)


@dataclass
class Result:
    function: str
    payload: Any
    error: bool  # the function raised (Lambda's X-Amz-Function-Error)

    @property
    def http_status(self) -> int | None:
        return self.payload.get("statusCode") if isinstance(self.payload, dict) else None


class Invoker:
    """Invokes the stack's functions by logical id through a Lambda endpoint."""

    def __init__(self, endpoint_url: str, stack: str = "engage", region: str = "us-east-1"):
        import boto3
        from botocore.config import Config

        options = {"region_name": region, "endpoint_url": endpoint_url,
                   "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                   "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
        config = Config(retries={"max_attempts": 1}, read_timeout=900, connect_timeout=5)
        self.lambda_ = boto3.client("lambda", config=config, **options)
        self.cloudformation = boto3.client("cloudformation", config=config, **options)
        self.stack = stack
        self._functions: dict[str, str] | None = None

    def functions(self) -> dict[str, str]:
        """Logical id -> physical name of every Lambda function in the stack."""
        if self._functions is None:
            found = {}
            pages = self.cloudformation.get_paginator("list_stack_resources").paginate(StackName=self.stack)
            for page in pages:
                for res in page["StackResourceSummaries"]:
                    if res["ResourceType"] == "AWS::Lambda::Function":
                        found[res["LogicalResourceId"]] = res["PhysicalResourceId"]
            self._functions = found
        return self._functions

    def invoke(self, function: str, event: Any) -> Result:
        functions = self.functions()
        physical = functions.get(function) or (function if function in functions.values() else None)
        if physical is None:
            raise LookupError(f"no function {function!r} in stack {self.stack}: use one of "
                              f"{', '.join(sorted(functions))}")
        answer = self.lambda_.invoke(FunctionName=physical, Payload=json.dumps(event).encode())
        raw = answer["Payload"].read()
        payload = json.loads(raw) if raw else None
        return Result(function, payload, error="FunctionError" in answer)


def load_event(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise LookupError(f"no event file {path}") from error
    except ValueError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error


def seed(invoker: Invoker) -> list[Result]:
    """Make the samples' world exist in the default space (idempotent; see the module doc)."""
    results = [invoker.invoke("ProfileProcessorFunction", load_event(EVENTS / "profile_processor_batch.json"))]
    template_event = load_event(EVENTS / "management_api_create_audience.json")
    for audience in SEED_AUDIENCES:
        event = copy.deepcopy(template_event)
        event["body"] = json.dumps(audience)
        event["headers"]["authorization"] = "Basic " + base64.b64encode(f"{ACCESS_TOKEN}:".encode()).decode()
        event["headers"].pop("content-length", None)
        results.append(invoker.invoke("ManagementApiFunction", event))
    for result in results:
        status = result.http_status
        if result.error or (result.payload or {}).get("batchItemFailures") or (
                status is not None and status >= 300 and status != 409):  # 409: the audience is already there
            raise RuntimeError(f"seeding the sample data failed in {result.function}: {result.payload}")
    return results


def reachable(endpoint_url: str) -> bool:
    """Whether something answers HTTP at this endpoint (a local cloud, presumably)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(endpoint_url.rstrip("/") + "/moto-api/", timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engage invoke", description="Run one function of template.yaml with an event, on the local cloud "
        "(the sam local invoke of this project, without Docker). Prints the function's response.")
    parser.add_argument("function", help="logical id in template.yaml, for example IngestFunction")
    parser.add_argument("-e", "--event", required=True, help="event file, for example events/ingest_track.json "
                        "(- reads standard input)")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="AWS endpoint of a running local cloud (default: AWS_ENDPOINT_URL, else "
                        "http://127.0.0.1:$ENGAGE_AWS_PORT if one answers there, else a throwaway local cloud)")
    parser.add_argument("--stack", default="engage", help="stack name (default engage)")
    parser.add_argument("--no-seed", action="store_true",
                        help="do not create the samples' user-42 and audiences pro/vips in space local first")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        event = json.load(sys.stdin) if args.event == "-" else load_event(args.event)
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    endpoint = args.endpoint_url
    if endpoint is None:
        default = f"http://127.0.0.1:{os.environ.get('ENGAGE_AWS_PORT', '4566')}"
        endpoint = default if reachable(default) else None
    out = sys.stdout
    # As with sam local invoke: the response on stdout, everything else (the functions' logs) on stderr.
    with contextlib.redirect_stdout(sys.stderr):
        if endpoint is not None:
            code, result = _run(Invoker(endpoint, args.stack), args, event)
        else:
            print("engage invoke: no local cloud is running; starting a throwaway one for this invocation "
                  "(run `make dev` in another terminal to keep what it writes)", file=sys.stderr)
            code, result = _run_throwaway(args, event)
    if result is not None:
        print(json.dumps(result.payload, indent=2), file=out)
    return code


def _run(invoker: Invoker, args: argparse.Namespace, event: Any) -> tuple[int, Result | None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if not args.no_seed:
            seed(invoker)
        result = invoker.invoke(args.function, event)
    except (LookupError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
    except (BotoCoreError, ClientError) as error:  # no such stack there, or not a local cloud at all
        print(f"error: the AWS endpoint {invoker.lambda_.meta.endpoint_url} answered: {error}", file=sys.stderr)
        return 2, None
    if result.error:
        print(f"engage invoke: {args.function} raised (a function error)", file=sys.stderr)
        return 1, result
    return 0, result


def _run_throwaway(args: argparse.Namespace, event: Any) -> tuple[int, Result | None]:
    import logging
    import warnings

    from localcloud.server import LocalCloud

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "moto"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*not supported by moto's CloudFormation.*")
    cloud = LocalCloud(api_port=0, aws_port=0, stack_name=args.stack, space=(SPACE, WRITE_KEY, ACCESS_TOKEN))
    try:
        cloud.start()
        outcome = _run(Invoker(cloud.cloud.url, args.stack, cloud.region), args, event)
        cloud.settle(timeout=120)  # what the invocation set off runs before the cloud goes
        return outcome
    finally:
        cloud.stop()
