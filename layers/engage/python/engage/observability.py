"""Powertools Logger, Tracer and Metrics, created once and shared by every handler."""
import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="engage")
# Engage's only outbound calls are AWS calls through botocore (boto3 and pynamodb). Patching
# those two gives the same subsegments as the default patch_all, which would also import
# requests, sqlite3 and the like on every cold start only to patch them.
tracer = Tracer(service="engage", patch_modules=("botocore", "pynamodb"))
metrics = Metrics(namespace="Engage", service="engage")
# An invocation with no metric to publish (most of a stream handler's) is normal here: powertools warns about it
# on stderr each time, a log line per invocation billed by CloudWatch Logs and filling `make dev`'s output.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
