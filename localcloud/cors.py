"""CORS for the local HTTP API, from the template's HttpApi `CorsConfiguration` (as API Gateway does it).

With CORS configured, API Gateway (HTTP API) answers a preflight itself (an OPTIONS request
with `Origin` and `Access-Control-Request-Method`), with 204 and the configured
`Access-Control-Allow-*` headers, whether or not an OPTIONS route exists; and it sets
`Access-Control-Allow-Origin` (plus `-Expose-Headers`, `-Allow-Credentials`) on every
response to a request that carries an allowed `Origin`, replacing whatever CORS headers
the function returned. A preflight that asks for an origin, method or header the
configuration does not allow gets the 204 without those headers, so the browser refuses.

The configuration comes from `AWS::Serverless::HttpApi` resources (merged over
`Globals.HttpApi.CorsConfiguration`); routes without an `ApiId` belong to SAM's implicit
`ServerlessHttpApi`, which only the Globals configure. Nothing is hard-coded here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcloud import template

IMPLICIT_API = "ServerlessHttpApi"  # SAM's logical id for the API of HttpApi events without ApiId


@dataclass(frozen=True)
class Cors:
    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Cors | None:
        if config is True:  # SAM's shorthand: any origin
            return cls(allow_origins=("*",))
        if not isinstance(config, dict) or not config:
            return None

        def strings(name: str) -> tuple[str, ...]:
            value = config.get(name) or []
            return tuple(str(v) for v in (value if isinstance(value, list) else [value]))

        max_age = config.get("MaxAge")
        return cls(allow_origins=strings("AllowOrigins"), allow_methods=tuple(m.upper() for m in strings(
            "AllowMethods")), allow_headers=tuple(h.lower() for h in strings("AllowHeaders")),
            expose_headers=strings("ExposeHeaders"), max_age=int(max_age) if max_age is not None else None,
            allow_credentials=bool(config.get("AllowCredentials", False)))

    def _origin(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for this Origin, or None if it is not allowed."""
        if "*" in self.allow_origins:
            return "*"
        wanted = origin.rstrip("/").lower()
        return origin if any(o.rstrip("/").lower() == wanted for o in self.allow_origins) else None

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers API Gateway adds to the answer to a cross-origin (non-preflight) request."""
        allowed = self._origin(origin) if origin else None
        if allowed is None:
            return {}
        headers = {"access-control-allow-origin": allowed}
        if self.expose_headers:
            headers["access-control-expose-headers"] = ",".join(self.expose_headers)
        if self.allow_credentials:
            headers["access-control-allow-credentials"] = "true"
        return headers

    def preflight_headers(self, origin: str, method: str, request_headers: str | None) -> dict[str, str]:
        """The 204 answer's headers to a preflight; empty when it asks for something not allowed."""
        allowed = self._origin(origin)
        method = method.strip().upper()
        asked = [h.strip().lower() for h in (request_headers or "").split(",") if h.strip()]
        if allowed is None or not ("*" in self.allow_methods or method in self.allow_methods):
            return {}
        if "*" not in self.allow_headers and any(h not in self.allow_headers for h in asked):
            return {}
        headers = {"access-control-allow-origin": allowed,
                   "access-control-allow-methods": ",".join(self.allow_methods)}
        if self.allow_headers:
            headers["access-control-allow-headers"] = ",".join(asked if "*" in self.allow_headers
                                                               else self.allow_headers)
        if self.max_age is not None:
            headers["access-control-max-age"] = str(self.max_age)
        if self.allow_credentials:
            headers["access-control-allow-credentials"] = "true"
        return headers


def from_template(path: Path) -> dict[str, Cors]:
    """HttpApi logical id -> its CORS configuration, for every API that has one."""
    loaded = template.load(path)
    global_config = (loaded.get("Globals") or {}).get("HttpApi", {}).get("CorsConfiguration")
    found: dict[str, Cors] = {}
    apis = {IMPLICIT_API: {}} | {name: res.get("Properties") or {} for name, res in template.resources(
        "AWS::Serverless::HttpApi", path=path).items()}
    for name, props in apis.items():
        config = props.get("CorsConfiguration", global_config)
        if isinstance(config, dict) and isinstance(global_config, dict):
            config = {**global_config, **config}
        cors = Cors.from_config(config)
        if cors is not None:
            found[name] = cors
    return found


def strip(headers: dict[str, str]) -> dict[str, str]:
    """A function's own CORS headers, which API Gateway ignores when the API configures CORS."""
    return {k: v for k, v in headers.items() if not k.lower().startswith("access-control-")}
