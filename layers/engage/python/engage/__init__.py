"""Engage: the domain package shared by every function (shipped as the Lambda layer).

Modules are named for the domain (spaces, ingestion, identity, profiles, audiences, ...);
handlers in functions/ import them, never the reverse.

Importing it first (every handler's first import) makes two powertools packages load per name: their
`__init__` imports every event class and every resolver (AppSync's, Bedrock's ...), about a twentieth
of a cold start, where a handler reads one or two (engage.lazy.package).
"""
from engage import lazy

lazy.package("aws_lambda_powertools.utilities.data_classes")
lazy.package("aws_lambda_powertools.event_handler")
