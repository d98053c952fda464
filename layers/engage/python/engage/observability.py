"""Powertools Logger, Tracer and Metrics, created once and shared by every handler."""
from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="engage")
# Engage's only outbound calls go through botocore (boto3 and pynamodb): patching just it traces
# every AWS call, where the default patch_all would import requests, sqlite3 and the like on
# each cold start for nothing.
tracer = Tracer(service="engage", patch_modules=("botocore",))
metrics = Metrics(namespace="Engage", service="engage")
