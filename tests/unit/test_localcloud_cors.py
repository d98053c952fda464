"""CORS of the local HTTP API, read from the template's CorsConfiguration, and the SDK routes it serves."""
from __future__ import annotations

from pathlib import Path

from localcloud import cors, http_api, template


def test_the_project_api_allows_any_origin_with_the_headers_the_sdks_send():
    # Given template.yaml's EngageHttpApi
    configured = cors.from_template(template.TEMPLATE)["EngageHttpApi"]
    props = template.resources("AWS::Serverless::HttpApi")["EngageHttpApi"]["Properties"]["CorsConfiguration"]
    # Then what the local cloud serves is exactly that configuration
    assert configured.allow_origins == ("*",) == tuple(props["AllowOrigins"])
    assert {"content-type", "authorization", "content-encoding", "x-retry-count"} <= set(configured.allow_headers)
    assert "POST" in configured.allow_methods and "retry-after" in configured.expose_headers
    # And a browser preflight for analytics.js's post (Basic auth, a retry count) is allowed
    answer = configured.preflight_headers("https://shop.example", "POST", "authorization,content-type,x-retry-count")
    assert answer["access-control-allow-origin"] == "*"
    assert "POST" in answer["access-control-allow-methods"].split(",")
    assert "content-type" in answer["access-control-allow-headers"].split(",")
    assert answer["access-control-max-age"] == str(props["MaxAge"])


def test_every_ingest_route_belongs_to_the_api_with_cors():
    routes = http_api.routes_from_template(template.TEMPLATE)
    ingest = {r.path: r.api for r in routes if r.function == "IngestFunction"}
    assert {f"/v1/{short}" for short in "tipsgab"} <= set(ingest)
    assert set(ingest.values()) == {"EngageHttpApi"}


def test_a_preflight_asking_for_what_is_not_allowed_gets_no_cors_headers():
    config = cors.Cors(allow_origins=("https://a.example",), allow_methods=("POST",),
                       allow_headers=("content-type",), max_age=60)
    assert config.preflight_headers("https://b.example", "POST", None) == {}
    assert config.preflight_headers("https://a.example", "DELETE", None) == {}
    assert config.preflight_headers("https://a.example", "POST", "content-type, x-secret") == {}
    # And an allowed named origin is echoed, not "*"
    assert config.preflight_headers("https://a.example", "post", "Content-Type") == {
        "access-control-allow-origin": "https://a.example", "access-control-allow-methods": "POST",
        "access-control-allow-headers": "content-type", "access-control-max-age": "60"}


def test_responses_carry_origin_expose_and_credentials_and_drop_the_functions_own():
    config = cors.Cors(allow_origins=("*",), expose_headers=("x-ratelimit-reset",))
    assert config.response_headers("https://shop.example") == {
        "access-control-allow-origin": "*", "access-control-expose-headers": "x-ratelimit-reset"}
    assert config.response_headers(None) == {}
    named = cors.Cors(allow_origins=("https://a.example",), allow_credentials=True)
    assert named.response_headers("https://a.example") == {
        "access-control-allow-origin": "https://a.example", "access-control-allow-credentials": "true"}
    assert named.response_headers("https://evil.example") == {}
    assert cors.strip({"Access-Control-Allow-Origin": "x", "content-type": "a"}) == {"content-type": "a"}


def test_globals_configure_the_implicit_api_and_star_headers_echo_what_was_asked(tmp_path: Path):
    # Given a template whose HttpApi events have no ApiId and whose CORS is in Globals
    path = tmp_path / "template.yaml"
    path.write_text("""
Globals:
  HttpApi:
    CorsConfiguration: {AllowOrigins: ["*"], AllowMethods: ["*"], AllowHeaders: ["*"]}
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn
      Handler: app.handler
      Events:
        Get: {Type: HttpApi, Properties: {Path: /x, Method: GET}}
""")
    configured = cors.from_template(path)
    (route,) = http_api.routes_from_template(path)
    # Then the route's API is SAM's implicit one, configured by the Globals
    assert route.api == cors.IMPLICIT_API and set(configured) == {cors.IMPLICIT_API}
    answer = configured[route.api].preflight_headers("https://a.example", "PATCH", "X-One, x-two")
    assert answer["access-control-allow-headers"] == "x-one,x-two"


def test_no_configuration_means_no_cors():
    assert cors.Cors.from_config(None) is None
    assert cors.Cors.from_config(True) == cors.Cors(allow_origins=("*",))
