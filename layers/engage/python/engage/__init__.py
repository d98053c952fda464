"""Engage: the domain package shared by every function (shipped as the Lambda layer).

Modules are named for the domain (spaces, ingestion, identity, profiles, audiences, ...);
handlers in functions/ import them, never the reverse.
"""
