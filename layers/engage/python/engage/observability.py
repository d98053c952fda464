"""Powertools Logger, Tracer and Metrics, created once and shared by every handler."""
import os
import warnings
from contextlib import asynccontextmanager, contextmanager

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

logger = Logger(service="engage")
metrics = Metrics(namespace="Engage", service="engage")
# An invocation with no metric to publish (most of a stream handler's) is normal here: powertools warns about it
# on stderr each time, a log line per invocation billed by CloudWatch Logs and filling `make dev`'s output.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


class Untraced(BaseProvider, BaseSegment):
    """The Tracer's provider when the stack's Tracing parameter is not Active: records nothing. powertools'
    own disabled Tracer still imports the X-Ray SDK (and asyncio with it), about 50 ms of every cold start."""

    @contextmanager
    def in_subsegment(self, name=None, **kwargs):
        yield self

    @asynccontextmanager
    async def in_subsegment_async(self, name=None, **kwargs):
        yield self

    def put_annotation(self, key, value) -> None: ...
    def put_metadata(self, key, value, namespace="default") -> None: ...
    def patch(self, modules) -> None: ...
    def patch_all(self) -> None: ...
    def close(self, end_time=None) -> None: ...
    def add_subsegment(self, subsegment) -> None: ...
    def remove_subsegment(self, subsegment) -> None: ...
    def add_exception(self, exception, stack, remote=False) -> None: ...


def tracing_active(environ=os.environ) -> bool:
    """The stack's Tracing parameter (template.yaml Globals: TRACING)."""
    return environ.get("TRACING") == "Active"


if tracing_active():
    # Engage's only outbound calls are AWS calls through botocore (boto3 and pynamodb). Patching
    # those two gives the same subsegments as the default patch_all, which would also import
    # requests, sqlite3 and the like on every cold start only to patch them.
    tracer = Tracer(service="engage", patch_modules=("botocore", "pynamodb"))
else:
    tracer = Tracer(service="engage", disabled=True, provider=Untraced())
