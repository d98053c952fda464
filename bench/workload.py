"""Realistic, seeded workloads: a web shop's audiences and its event traffic.

Everything here is deterministic for a seed, so counted figures repeat run to run.
"""
from __future__ import annotations

import copy
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

from bench.report import ROOT

TRACK_EVENTS = {  # name -> share of track calls (a shop's typical funnel shape)
    "Product Viewed": 30, "Products Searched": 12, "Product Added": 12, "Cart Viewed": 8,
    "Checkout Started": 6, "Order Completed": 4, "Signed In": 10, "Product Removed": 4,
    "Coupon Applied": 3, "Wishlist Added": 5, "Review Submitted": 2, "Subscription Started": 4,
}
PLANS = ["free", "starter", "pro", "enterprise"]
COUNTRIES = ["US", "GB", "FR", "DE", "ES", "CA", "BR", "JP"]
PAGES = ["/", "/pricing", "/products", "/cart", "/blog/launch", "/account", "/checkout", "/docs"]
# Share of calls by type for a typical web app: ~30% identify/page, 70% track.
MIX = {"identify": 15, "page": 15, "track": 70}


def audiences(n: int, seed: int = 5) -> list[dict]:
    """`n` audience definitions (API.md shapes) in the mix a marketing team builds: traits,
    windowed event counts, both combined, property filters, not-performed, recency in hours,
    audiences of audiences and funnels."""
    rng = random.Random(seed)
    names = list(TRACK_EVENTS) + ["Page Viewed"]
    out: list[dict] = []
    for i in range(n):
        event = names[i % len(names)]
        kind = i % 10
        if kind == 0:
            condition = {"trait": "plan", "op": "eq", "value": PLANS[i % len(PLANS)]}
        elif kind == 1:
            condition = {"event": event, "count": {"op": "gte", "value": rng.randint(1, 5)},
                         "window": {"within_days": rng.choice([7, 14, 30, 90])}}
        elif kind == 2:  # the typical one: a trait and a windowed event count
            condition = {"all": [{"trait": "plan", "op": "eq", "value": PLANS[i % len(PLANS)]},
                                 {"event": event, "count": {"op": "gte", "value": rng.randint(1, 3)},
                                  "window": {"within_days": 30}}]}
        elif kind == 3:
            condition = {"event": "Order Completed", "where": [
                {"property": "revenue", "op": "gt", "value": rng.choice([20, 50, 100, 250])}],
                "window": {"within_days": rng.choice([30, 90])}}
        elif kind == 4:
            condition = {"all": [{"trait": "email", "op": "exists"},
                                 {"event": event, "count": {"op": "eq", "value": 0}, "window": {"within_days": 14}}]}
        elif kind == 5:
            condition = {"event": "Page Viewed", "where": [
                {"property": "path", "op": "eq", "value": PAGES[i % len(PAGES)]}], "window": {"within_days": 7}}
        elif kind == 6:
            condition = {"trait": "country", "op": "in", "value": rng.sample(COUNTRIES, 3)}
        elif kind == 7 and out:
            condition = {"all": [{"audience": out[rng.randrange(len(out))]["key"]},
                                 {"trait": "logins", "op": "gte", "value": rng.randint(2, 10)}]}
        elif kind == 8:
            condition = {"event": event, "window": {"within_hours": rng.choice([1, 6, 24])}}
        else:
            condition = {"funnel": [{"event": "Product Added"},
                                    {"event": "Order Completed", "within_hours": 24, "performed": False}],
                         "window": {"within_days": 7}}
        out.append({"key": f"a{i:04d}", "name": f"Audience {i}", "backfill": False, "condition": condition})
    return out


def one_event_audiences(n: int) -> list[dict]:
    """`n` audiences each reading its own event (`Event 0000`...): an event touches exactly one."""
    return [{"key": f"e{i:05d}", "name": f"Did event {i}", "backfill": False,
             "condition": {"all": [{"trait": "plan", "op": "eq", "value": "pro"},
                                   {"event": f"Event {i:04d}", "count": {"op": "gte", "value": 2},
                                    "window": {"within_days": 30}}]}}
            for i in range(n)]


def browser_context() -> dict:
    """The context analytics.js sends from the shop's home page (a new dict each time: callers edit it)."""
    return {"library": {"name": "analytics.js", "version": "5.2.0"}, "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15",
            "page": {"path": "/", "url": "https://shop.example.com/"}}


class Traffic:
    """Segment messages from `profiles` users of a web shop, in arrival order."""

    def __init__(self, profiles: int, seed: int = 5, anonymous_first: float = 0.2):
        self.rng = random.Random(seed)
        self.profiles = profiles
        self.anonymous_first = anonymous_first
        self.sequence = 0
        # A few users are far more active than most (Zipf-like weights).
        self.weights = [1 / (rank + 1) ** 0.8 for rank in range(profiles)]

    def _base(self, user: int, when: datetime, *, anonymous: bool = False) -> dict:
        self.sequence += 1
        message = {"anonymousId": f"anon-{user:05d}-{user * 7919 % 100000:05d}",
                   "messageId": f"bench-{self.sequence:07d}", "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                   "context": browser_context()}
        if not anonymous:
            message["userId"] = f"user-{user:05d}"
        return message

    def identify(self, user: int, when: datetime, *, first: bool = False) -> dict:
        message = self._base(user, when)
        message["type"] = "identify"
        message["traits"] = {"logins": self.rng.randint(1, 30), "plan": self.rng.choice(PLANS)}
        if first:
            message["traits"].update({"email": f"user{user}@example.com", "name": f"User {user}",
                                      "country": self.rng.choice(COUNTRIES), "createdAt": message["timestamp"]})
        return message

    def page(self, user: int, when: datetime, *, anonymous: bool = False) -> dict:
        message = self._base(user, when, anonymous=anonymous)
        path = self.rng.choice(PAGES)
        message.update({"type": "page", "name": path.strip("/") or "Home",
                        "properties": {"path": path, "url": f"https://shop.example.com{path}", "title": "Shop"}})
        return message

    def track(self, user: int, when: datetime) -> dict:
        message = self._base(user, when)
        event = self.rng.choices(list(TRACK_EVENTS), weights=list(TRACK_EVENTS.values()))[0]
        sku = self.rng.randint(1000, 9999)
        properties: dict = {"product_id": f"p-{sku}", "sku": f"{sku}-32", "price": self.rng.choice([9, 19, 49, 99]),
                            "category": self.rng.choice(["games", "books", "toys"])}
        if event == "Order Completed":
            revenue = round(self.rng.uniform(10, 400), 2)
            properties = {"order_id": f"o-{self.sequence}", "revenue": revenue, "total": revenue + 5,
                          "currency": "USD", "products": [{"product_id": f"p-{sku}", "quantity": 1}]}
        elif event == "Products Searched":
            properties = {"query": self.rng.choice(["monopoly", "chess", "lego", "puzzle"])}
        message.update({"type": "track", "event": event, "properties": properties})
        return message

    def warm_up(self, start: datetime, end: datetime) -> list[dict]:
        """Every user's first visit: some browse anonymously first, then identify, then act."""
        span = (end - start) / max(self.profiles, 1)
        out = []
        for user in range(self.profiles):
            when = start + span * user
            if self.rng.random() < self.anonymous_first:
                out.append(self.page(user, when, anonymous=True))
            out.append(self.identify(user, when + timedelta(seconds=1), first=True))
            out.append(self.track(user, when + timedelta(seconds=2)))
        return out

    def steady(self, count: int, start: datetime, end: datetime) -> list[dict]:
        """`count` messages from known users, in the MIX, timestamps spread evenly over [start, end)."""
        span = (end - start) / max(count, 1)
        kinds = self.rng.choices(list(MIX), weights=list(MIX.values()), k=count)
        users = self.rng.choices(range(self.profiles), weights=self.weights, k=count)
        out = []
        for i, (kind, user) in enumerate(zip(kinds, users, strict=True)):
            when = start + span * i
            out.append(self.identify(user, when) if kind == "identify" else
                       self.page(user, when) if kind == "page" else self.track(user, when))
        return out


_TEMPLATE = json.loads((ROOT / "events" / "ingest_track.json").read_text())


# Basic auth of the bench space's write key (bench.harness.SPACE: "acme-write-key").
BENCH_AUTH = "Basic YWNtZS13cml0ZS1rZXk6"


def api_event(call: str, body: dict | str, *, write_key_header: str = BENCH_AUTH) -> dict:
    """An HTTP API (payload 2.0) event for POST /v1/<call>, from events/ingest_track.json."""
    event = copy.deepcopy(_TEMPLATE)
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/{call}"
    event["routeKey"] = event["requestContext"]["routeKey"] = f"POST /v1/{call}"
    event["body"] = text
    event["headers"] = {**event["headers"], "content-length": str(len(text.encode())),
                        "authorization": write_key_header}
    return event


def sample(name: str) -> dict:
    return json.loads((Path(ROOT) / "events" / name).read_text())
