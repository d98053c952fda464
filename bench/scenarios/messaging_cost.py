"""Cost of one message through the sender (issue 11): AWS requests and DynamoDB units per sent
email, and own time to render and send, beside a yardstick measured in the same run.

On an in-process moto account built from template.yaml (bench.harness): `profiles` users are
identified through the real ingest and profile_processor handlers (email and first_name traits),
the tests' welcome email template is created through the management API, one message is sent first
to warm the container's template and settings caches (not counted: on AWS they are read at most once
a minute per warm container), then one email per profile goes through
`engage.messaging.send_message` (journey source, a new idempotency key each), then the same requests
again (retries: the same key answers the same Delivery and sends nothing).

Yardstick: python-liquid 2 rendering the same three fields (subject, HTML body, text) from templates
parsed once, with a plain Environment: the floor under the sender's render step.
"""
from __future__ import annotations

import os
import time

from bench.report import Figure
from bench.scenarios.pipeline_cost import ANCHOR

FROM = "news@example.com"
WELCOME = {"key": "welcome", "channel": "email",
           "subject": "Welcome {{ profile.traits.first_name | default: 'friend' }}",
           "body": "<p>Hi {{ profile.traits.first_name }}</p><a href='{{ unsubscribe_url }}'>unsubscribe</a>",
           "text": "Hi {{ profile.traits.first_name }}"}


def _setup(profiles: int) -> list[str]:
    import boto3

    from bench import workload
    from bench.harness import REGION, Lambdas, StreamTap
    from engage import config, profiles_store
    from engage.messaging import sender
    from tests.integration.audience_support import call_api

    key_id = boto3.client("kms", region_name=REGION).create_key(Description="messaging")["KeyMetadata"]["KeyId"]
    os.environ.update({"MESSAGING_KEY_ID": key_id, "PUBLIC_API_URL": "https://api.example.test",
                       "EMAIL_FROM_ADDRESS": FROM})
    boto3.client("sesv2", region_name=REGION).create_email_identity(EmailIdentity=FROM)
    config.settings.cache_clear()
    sender.reset()
    lambdas = Lambdas()
    tap = StreamTap(os.environ["EVENTS_TABLE"])
    for i in range(profiles):
        body = {"userId": f"user-{i}", "messageId": f"m-{i}", "timestamp": ANCHOR.isoformat(),
                "traits": {"email": f"user{i}@example.com", "first_name": f"Ann {i}"}}
        response = lambdas.invoke("ingest", workload.api_event("identify", body))
        if response["statusCode"] != 200:
            raise AssertionError(f"ingest refused a benchmark identify: {response}")
    for batch in tap.batches(100):
        lambdas.invoke("profile_processor", batch)
    status, body = call_api("POST", "/v1/templates", WELCOME)
    if status != 201:
        raise AssertionError(f"template refused: {body}")
    return [profiles_store.resolve("acme", "users", "user_id", f"user-{i}").profile_id for i in range(profiles)]


def _yardstick(scopes: list[dict]) -> float:
    """Seconds to render the three fields of every scope with plain python-liquid (parsed once)."""
    from liquid import Environment

    plain, html = Environment(), Environment(autoescape=True)
    subject, body, text = (plain.from_string(WELCOME["subject"]), html.from_string(WELCOME["body"]),
                           plain.from_string(WELCOME["text"]))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for scope in scopes:
            subject.render(**scope), body.render(**scope), text.render(**scope)
        best = min(best, time.perf_counter() - started)
    return best


def _ours(scopes: list[dict]) -> float:
    from engage.messaging import templates

    definition = templates.parse_template(WELCOME)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for scope in scopes:
            templates.render(definition, scope)
        best = min(best, time.perf_counter() - started)
    return best


def run(context) -> list[Figure]:
    from bench.harness import moto_account, quiet_stdout
    from bench.meter import Usage, measure
    from engage.messaging import SendRequest, send_message, templates

    count = 1000 if context.full else 100
    source = {"type": "journey", "key": "onboarding", "step": "welcome"}
    with moto_account(now=ANCHOR), quiet_stdout():  # the sender's EMF metrics are printed
        profile_ids = _setup(count + 1)
        warm = send_message(SendRequest("acme", profile_ids[0], "email", "welcome", "warm", source))
        if warm.status != "sent":
            raise AssertionError(f"the warm-up message was not sent: {warm}")
        first, again = Usage(), Usage()
        for profile_id in profile_ids[1:]:
            with measure() as usage:
                delivery = send_message(SendRequest("acme", profile_id, "email", "welcome", "k1", source))
            if delivery.status != "sent":
                raise AssertionError(f"a benchmark message was not sent: {delivery}")
            first += usage
        for profile_id in profile_ids[1:]:
            with measure() as usage:
                delivery = send_message(SendRequest("acme", profile_id, "email", "welcome", "k1", source))
            again += usage
        scopes = [templates.scope_for({"traits": {"first_name": f"Ann {i}", "email": f"user{i}@example.com"}},
                                      source=source, unsubscribe_url=f"https://api.example.test/u?t={i}")
                  for i in range(count)]
        ours, floor = _ours(scopes), _yardstick(scopes)
    section = f"Messaging: one email through the sender ({count} profiles)"
    basis = f"{count} emails, one per profile, engage.messaging.send_message with a new idempotency key each"
    figures = [
        Figure(section, "DynamoDB requests per sent message", first.count("dynamodb") / count, "requests",
               f"counted by bench.meter; {basis}; template and settings caches warm", counted=True),
        Figure(section, "write units per sent message", first.write_units / count, "WRU",
               "from item sizes as on-demand bills", counted=True),
        Figure(section, "read units per sent message", first.read_units / count, "RRU",
               "from item sizes (4 KB strongly consistent, half for eventually consistent)", counted=True),
        Figure(section, "SES requests per sent message", (first.count("sesv2") + first.count("ses")) / count,
               "requests", "SendEmail calls", counted=True),
        Figure(section, "SNS requests per sent message", first.count("sns") / count, "requests",
               "none for email", counted=True),
        Figure(section, "EventBridge events per sent message", first.bus_events / count, "events",
               "Message Sent entries", counted=True),
        Figure(section, "AWS requests per retried message (same key)", sum(again.requests.values()) / count,
               "requests", "the same requests again: the delivery log answers, nothing is sent", counted=True),
        Figure(section, "SES requests per retried message (same key)",
               (again.count("sesv2") + again.count("ses")) / count, "requests", "must be 0", counted=True),
        Figure(section, "sender own time per sent message", first.own_seconds / count * 1e3, "ms",
               "wall time minus time inside AWS SDK calls (moto apart), this machine"),
        Figure(section, "messages per second through the sender on one core (own time)",
               count / first.own_seconds if first.own_seconds else 0, "msg/s",
               "own time only: on AWS each message also waits on its AWS requests (see the counts above)", higher_is_better=True),
        Figure(section, "render time per message", ours / count * 1e6, "µs",
               "engage.messaging.templates.render of subject, HTML body and text (parse cached), best of 3",
               floor=floor / count * 1e6,
               floor_method="python-liquid 2 plain Environments, the same three templates parsed once, best of 3"),
    ]
    return figures
