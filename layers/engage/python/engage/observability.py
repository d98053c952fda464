"""Powertools Logger, Tracer and Metrics, created once and shared by every handler."""
from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="engage")
tracer = Tracer(service="engage")
metrics = Metrics(namespace="Engage", service="engage")
