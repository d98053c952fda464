"""Generate the OpenAPI 3.1 document of the stack's HTTP API from the handlers' resolvers.

Each function's resolver (powertools) gives its operations: paths, methods, path parameters,
summaries, tags, security, responses, request bodies (see engage.openapi). The API Gateway
routes come from template.yaml: a resolver route that the template splits into several API
routes (the Tracking API's `/v1/<call>`) is documented once per API route, and a template
route that no resolver route serves is an error, as is a resolver route the template never
routes. The result is one document for the one HTTP API (one base URL), tagged per API.
"""
from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engage import openapi
from engage.openapi import components

TITLE = "Engage HTTP API"
VERSION = "1"
DESCRIPTION = (
    "Segment-compatible Tracking API (write key), Profile API and management API (access token) of one "
    "Engage stack, generated from the handlers (`engage openapi`). docs/ingestion.md, docs/profile-api.md "
    "and docs/audiences-api.md describe behaviour and limits.")
SECURITY_SCHEMES = {
    openapi.WRITE_KEY: {"type": "http", "scheme": "basic",
                        "description": "the write key as username, empty password (or `writeKey` in the "
                                       "body)"},
    openapi.ACCESS_TOKEN: {"type": "http", "scheme": "basic",
                           "description": "the space's access token as username, empty password"},
}
TAGS = [
    {"name": openapi.TRACKING, "description": "Segment HTTP Tracking API (docs/ingestion.md)"},
    {"name": openapi.PROFILES, "description": "Segment-compatible Profile API (docs/profile-api.md)"},
    {"name": openapi.MANAGEMENT, "description": "audiences (docs/audiences-api.md); GET /openapi.json"},
]


@dataclass(frozen=True)
class ApiRoute:
    """One route of template.yaml's HTTP API: `METHOD /path` (API Gateway's `{param}` form) -> function."""

    function: str
    method: str
    path: str


class RouteMismatch(ValueError):
    """The template and the resolvers disagree about which routes exist."""


def build(resolvers: Mapping[str, Any], routes: Iterable[ApiRoute]) -> dict[str, Any]:
    """The document for `routes` (template.yaml), each served by `resolvers[route.function]`."""
    routes = [r for r in routes if r.path != "$default"]  # the catch-all answers 404s; it is no operation
    by_function: dict[str, list[ApiRoute]] = {}
    for route in routes:
        by_function.setdefault(route.function, []).append(route)
    paths: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for function, resolver in sorted(resolvers.items()):
        operations = _operations(resolver)
        claimed: set[tuple[str, str]] = set()
        for route in by_function.get(function, []):
            found = _serving(operations, route)
            if found is None:
                problems.append(f"template route {route.method} {route.path} ({function}) has no route in "
                                "its handler's resolver")
                continue
            template_path, operation = found
            claimed.add((route.method, template_path))
            documented = _concrete(operation, template_path, route.path)
            paths.setdefault(route.path, {})[route.method.lower()] = documented
        problems += [f"handler route {method} {path} ({function}) is not routed by template.yaml"
                     for method, path in sorted(set(operations) - claimed)]
    unknown = sorted(set(by_function) - set(resolvers))
    problems += [f"template routes of {name} but no resolver given for it" for name in unknown]
    if problems:
        raise RouteMismatch("; ".join(problems))
    schemas = components.schemas()
    _check_refs(paths, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "servers": [{"url": "/", "description": "the stack's ApiUrl output, or the local cloud's API URL"}],
        "tags": TAGS,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def _operations(resolver: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, /path/{param}) -> operation, as powertools generates it (validation is off: no 422s)."""
    schema = resolver.get_openapi_schema(security_schemes=SECURITY_SCHEMES)
    document = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
    operations = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            operations[(method.upper(), path)] = _tidy(operation)
    return operations


def _tidy(operation: dict[str, Any]) -> dict[str, Any]:
    operation = copy.deepcopy(operation)
    operation.pop("deprecated", None) if operation.get("deprecated") is False else None
    extra = operation.pop(openapi.QUERY, [])
    if isinstance(extra, dict):
        extra = _query_parameters(extra["models"])
    if extra:
        operation["parameters"] = operation.get("parameters", []) + extra
    operation["responses"] = {str(code): answer for code, answer in sorted(operation["responses"].items())}
    return operation


def _query_parameters(reference: str) -> list[dict[str, Any]]:
    """Query parameters from `{resource: model}` (`module:attribute`): each parameter once, saying where it
    applies and, where resources differ, each one's default and bounds."""
    module_name, _, attribute = reference.partition(":")
    models = getattr(importlib.import_module(module_name), attribute)
    schemas: dict[str, dict[str, dict[str, Any]]] = {}  # alias -> resource -> schema
    for resource, model in models.items():
        properties = model.model_json_schema()["properties"]
        for name, field in model.model_fields.items():
            alias = field.alias or name
            schemas.setdefault(alias, {})[resource] = _query_schema(properties[alias])
    parameters = []
    for alias in sorted(schemas):
        by_resource = schemas[alias]
        distinct = {json.dumps(schema, sort_keys=True) for schema in by_resource.values()}
        first = next(iter(by_resource.values()))
        if len(distinct) == 1:
            schema, where = first, "on " + ", ".join(f"/{resource}" for resource in by_resource)
        else:
            schema = {key: value for key, value in first.items() if key in ("type", "enum", "items")}
            where = "; ".join(f"/{resource}: {_bounds(s)}" for resource, s in by_resource.items())
        parameter = {"name": alias, "in": "query", "required": False, "schema": schema, "description": where}
        if schema.get("type") == "array":
            parameter.update(style="form", explode=False)  # `a,b`: comma-separated names
        parameters.append(parameter)
    return parameters


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model field's schema as a query parameter: no title, `null` dropped (absent means the default)."""
    schema = {key: value for key, value in schema.items() if key != "title"}
    options = [option for option in schema.pop("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default") is None:
        schema.pop("default", None)
    return schema


def _bounds(schema: dict[str, Any]) -> str:
    parts = [f"{name} {schema[key]}" for key, name in (("default", "default"), ("minimum", "min"),
                                                         ("maximum", "max")) if key in schema]
    return ", ".join(parts) or "any"


def _serving(operations: Mapping[tuple[str, str], dict], route: ApiRoute) -> tuple[str, dict] | None:
    """The resolver operation that answers `route`: the same path, else a parameterised path matching it."""
    if (route.method, route.path) in operations:
        return route.path, operations[(route.method, route.path)]
    for (method, path), operation in operations.items():
        if method == route.method and "{" in path and re.fullmatch(_pattern(path), route.path):
            return path, operation
    return None


def _pattern(path: str) -> str:
    return "".join("[^/{}]+" if part.startswith("{") else re.escape(part)
                   for part in re.split(r"(\{[^}]+\})", path) if part)


def _concrete(operation: dict[str, Any], resolver_path: str, api_path: str) -> dict[str, Any]:
    """The operation as documented at `api_path`: path parameters the API route fixes are dropped."""
    if resolver_path == api_path:
        return operation
    operation = copy.deepcopy(operation)
    kept = set(re.findall(r"\{([^}]+)\}", api_path))
    parameters = [p for p in operation.get("parameters", []) if p["in"] != "path" or p["name"] in kept]
    if parameters:
        operation["parameters"] = parameters
    else:
        operation.pop("parameters", None)
    operation["operationId"] = operation["operationId"].replace(re.sub(r"\W", "_", resolver_path),
                                                                re.sub(r"\W", "_", api_path))
    return operation


def _check_refs(value: Any, schemas: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        target = value.get("$ref")
        if isinstance(target, str):
            name = target.removeprefix("#/components/schemas/")
            if name not in schemas:
                raise KeyError(f"the document names schema {name!r}, which engage.openapi.components lacks")
        for item in value.values():
            _check_refs(item, schemas)
    elif isinstance(value, list):
        for item in value:
            _check_refs(item, schemas)
