"""A realistic space for the cost bench (issue 16): many profiles, long-tailed activity, 30 days.

`Space(persons, seed)` is a B2B2C web shop's month of Segment traffic, deterministic for a seed:

- persons: 75% identify at some point (30% of those browse anonymously first, so the anonymous
  profile merges into the identified one; 10% come back later on a second device, anonymous
  until they sign in: a second merge); 25% stay anonymous (a few page views).
- activity per person follows a Pareto law (alpha 1.2, at least 2 messages): most send a few,
  a few send thousands (capped at `cap`). Sessions spread from the person's first visit to the
  end of the 30 days; a session is a shop funnel (views, searches, add, checkout, order).
- accounts: 30% of identified persons belong to an account (about 12 users each), joined by a
  group call with the account's traits.
- delivery: analytics.js batching (flush at 10 messages or the session's end) to /v1/batch.

`Space.next_month()` is the same space a month on: most identified persons come back on the
device they signed in on (analytics.js keeps their anonymousId and userId), anonymous visitors
do not, and new persons arrive as in the first month. Sent after the first month, it is a space
in its steady state rather than one filling up.

`audiences(n)` gives `n` definitions from the seeds' use cases (docs/audiences.md examples).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from bench.workload import COUNTRIES, PAGES, PLANS, browser_context

DAYS = 30
TIERS = ["free", "team", "business", "enterprise"]
OFFERS = ["villa_42", "loft_7", "cabin_3"]
EVENTS = ["Product Viewed", "Products Searched", "Product Added", "Cart Viewed", "Checkout Started",
          "Order Completed", "Signed In", "Coupon Applied", "Wishlist Added", "Review Submitted", "Page Viewed"]
FLUSH_AT = 10  # analytics.js batching delivery: flushAt default


@dataclass
class Person:
    index: int
    identified: bool
    anonymous_first: bool
    second_device: bool
    account: int | None
    messages: int
    first_seen: datetime
    returning: bool = False  # known since an earlier month: no first identify, no account join


def audiences(n: int = 100, seed: int = 16) -> list[dict]:
    """`n` definitions in ten families from the seeds' use cases, cycled with varied parameters."""
    rng = random.Random(seed)
    out: list[dict] = []
    for i in range(n):
        family = i % 10
        event = EVENTS[(i // 10) % len(EVENTS)]
        entity = "users"
        if family == 0:  # custom trait: plan, country, high lifetime value
            condition = rng.choice([
                {"trait": "plan", "op": "eq", "value": rng.choice(PLANS)},
                {"trait": "country", "op": "in", "value": rng.sample(COUNTRIES, 3)},
                {"trait": "lifetime_value", "op": "gt", "value": rng.choice([500, 2000, 5000])}])
        elif family == 1:  # windowed event count
            condition = {"event": event, "count": {"op": "gte", "value": rng.randint(1, 5)},
                         "window": {"within_days": rng.choice([7, 14, 30])}}
        elif family == 2:  # trait and windowed count (the typical one)
            condition = {"all": [{"trait": "plan", "op": "eq", "value": rng.choice(PLANS)},
                                 {"event": event, "count": {"op": "gte", "value": rng.randint(1, 3)},
                                  "window": {"within_days": 30}}]}
        elif family == 3:  # property filters: big orders; viewed above a price without ordering
            condition = rng.choice([
                {"event": "Order Completed", "where": [{"property": "revenue", "op": "gt",
                                                        "value": rng.choice([50, 100, 250])}],
                 "window": {"within_days": rng.choice([7, 30])}},
                {"all": [{"event": "Product Viewed", "where": [{"property": "price", "op": "gt", "value": 90}],
                          "window": {"within_days": 30}},
                         {"not": {"event": "Order Completed", "window": {"within_days": 30}}}]}])
        elif family == 4:  # re-engagement: known but not seen lately; active earlier, not recently
            condition = rng.choice([
                {"all": [{"trait": "email", "op": "exists"},
                         {"event": "Signed In", "count": {"op": "eq", "value": 0},
                          "window": {"within_days": rng.choice([7, 14])}}]},
                {"all": [{"event": "Page Viewed", "window": {"between_days": [7, 30]}},
                         {"event": "Page Viewed", "count": {"op": "eq", "value": 0}, "window": {"within_days": 7}}]}])
        elif family == 5:  # page and offer views: a path this week; the same offer 5 times, not bought
            offer = rng.choice(OFFERS)
            condition = rng.choice([
                {"event": "Page Viewed", "where": [{"property": "path", "op": "eq", "value": rng.choice(PAGES)}],
                 "window": {"within_days": 7}},
                {"all": [{"event": "Product Viewed", "where": [{"property": "offer_id", "op": "eq", "value": offer}],
                          "count": {"op": "gte", "value": 5}, "window": {"within_days": 7}},
                         {"not": {"event": "Order Completed",
                                  "where": [{"property": "offer_id", "op": "eq", "value": offer}]}}]}])
        elif family == 6:  # funnels: checkout abandoned; added without ordering within hours
            condition = rng.choice([
                {"funnel": [{"event": "Checkout Started"}, {"event": "Order Completed", "performed": False}],
                 "window": {"within_days": 7}},
                {"funnel": [{"event": "Product Added"},
                            {"event": "Order Completed", "within_hours": rng.choice([4, 24]), "performed": False}],
                 "window": {"within_days": 14}}])
        elif family == 7 and out:  # audience of audiences
            inner = out[rng.randrange(len(out))]
            if inner.get("entity") == "accounts":
                inner = out[0]
            condition = {"all": [{"audience": inner["key"]},
                                 {"trait": "logins", "op": "gte", "value": rng.randint(2, 10)}]}
        elif family == 8:  # recency in hours
            condition = {"event": event, "window": {"within_hours": rng.choice([1, 6, 24])}}
        else:  # accounts: business accounts gone quiet; accounts where someone ordered
            entity = "accounts"
            condition = rng.choice([
                {"all": [{"trait": "tier", "op": "in", "value": ["business", "enterprise"]},
                         {"users": "none", "condition": {"event": "Signed In", "window": {"within_days": 14}}}]},
                {"users": "any", "condition": {"event": "Order Completed", "window": {"within_days": 30}}}])
        out.append({"key": f"r{i:03d}", "name": f"Realistic {i}", "entity": entity, "backfill": False,
                    "condition": condition})
    return out


class Space:
    """Messages of `persons` people over DAYS days from `start`, and their delivery in SDK batches."""

    def __init__(self, persons: int, start: datetime, *, seed: int = 16, cap: int = 5000):
        self.seed = seed
        self.rng = random.Random(seed)
        self.start = start
        self.end = start + timedelta(days=DAYS)
        self.month = 1
        self.cap = cap
        self.sequence = 0
        accounts = max(persons * 75 // 100 * 30 // 100 // 12, 1)
        self.accounts = accounts
        self.persons = [self._new_person(index) for index in range(persons)]

    def _new_person(self, index: int) -> Person:
        identified = self.rng.random() < 0.75
        messages = self._volume(identified)
        return Person(
            index=index, identified=identified,
            anonymous_first=identified and self.rng.random() < 0.30,
            second_device=identified and self.rng.random() < 0.10,
            account=self.rng.randrange(self.accounts) if identified and self.rng.random() < 0.30 else None,
            messages=messages,
            first_seen=self.start + timedelta(seconds=self.rng.uniform(0, DAYS * 86400 * 0.8)))

    def _volume(self, identified: bool) -> int:
        volume = int(2 / (1 - self.rng.random()) ** (1 / 1.2))  # Pareto, alpha 1.2, minimum 2
        return min(volume, self.cap) if identified else min(volume, 6)

    def next_month(self, *, returning: float = 0.6, newcomers: float = 0.25) -> Space:
        """The following DAYS days: a share `returning` of the identified persons come back (activity
        drawn anew, signed in on their first device, 5% on a new one), anonymous visitors do not, and
        `newcomers` x the first month's persons arrive as new ones. Its own seed: this month's
        messages stay what they were."""
        later = Space.__new__(Space)
        later.seed = self.seed
        later.rng = random.Random(f"{self.seed}-month-{self.month + 1}")
        later.start, later.end = self.end, self.end + timedelta(days=DAYS)
        later.month, later.cap, later.sequence, later.accounts = self.month + 1, self.cap, 0, self.accounts
        later.persons = []
        for person in self.persons:
            if person.identified and later.rng.random() < returning:
                later.persons.append(Person(
                    index=person.index, identified=True, anonymous_first=False,
                    second_device=later.rng.random() < 0.05, account=person.account,
                    messages=later._volume(True), returning=True,
                    first_seen=later.start + timedelta(seconds=later.rng.uniform(0, DAYS * 86400 * 0.8))))
        first = max(person.index for person in self.persons) + 1
        later.persons += [later._new_person(first + n) for n in range(int(len(self.persons) * newcomers))]
        return later

    # -- messages -----------------------------------------------------------------------------
    def _base(self, person: Person, when: datetime, device: int, *, anonymous: bool) -> dict:
        self.sequence += 1
        message = {"anonymousId": f"anon-{person.index:05d}-{device}-{person.index * 7919 % 100000:05d}",
                   # shaped as analytics.js makes them ("ajs-next-" + 32 hex): their length is what a
                   # profile's `applied` list and the history items pay for
                   "messageId": f"ajs-next-{hashlib.md5(self._id_seed().encode()).hexdigest()}",
                   "timestamp": _iso(when),
                   "context": browser_context()}
        if not anonymous:
            message["userId"] = f"user-{person.index:05d}"
        return message

    def _id_seed(self) -> str:
        return f"space-{self.sequence}" if self.month == 1 else f"space-m{self.month}-{self.sequence}"

    def _identify(self, person: Person, when: datetime, device: int, *, first: bool) -> dict:
        message = self._base(person, when, device, anonymous=False)
        message["type"] = "identify"
        traits = {"logins": self.rng.randint(1, 30), "plan": self.rng.choice(PLANS)}
        if first:
            traits.update({"email": f"user{person.index}@example.com", "name": f"User {person.index}",
                           "country": self.rng.choice(COUNTRIES), "createdAt": message["timestamp"],
                           "lifetime_value": round(self.rng.paretovariate(1.5) * 200, 2)})
        message["traits"] = traits
        return message

    def _group(self, person: Person, when: datetime, device: int) -> dict:
        message = self._base(person, when, device, anonymous=False)
        tier = TIERS[person.account % len(TIERS)]
        message.update({"type": "group", "groupId": f"acct-{person.account:04d}",
                        "traits": {"name": f"Company {person.account}", "tier": tier, "employees": 10 + person.account}})
        return message

    def _page(self, person: Person, when: datetime, device: int, *, anonymous: bool) -> dict:
        message = self._base(person, when, device, anonymous=anonymous)
        path = self.rng.choice(PAGES)
        message.update({"type": "page", "name": path.strip("/") or "Home",
                        "properties": {"path": path, "url": f"https://shop.example.com{path}", "title": "Shop"}})
        return message

    def _track(self, person: Person, when: datetime, device: int, event: str, basket: dict) -> dict:
        message = self._base(person, when, device, anonymous=False)
        if event in ("Product Viewed", "Product Added", "Wishlist Added"):
            sku = self.rng.randint(1000, 1400)
            properties = {"product_id": f"p-{sku}", "price": self.rng.choice([9, 19, 49, 99, 249]),
                          "category": self.rng.choice(["games", "books", "toys"]),
                          "offer_id": self.rng.choice(OFFERS)}
            basket.update(properties)
        elif event == "Order Completed":
            revenue = round(self.rng.uniform(10, 400), 2)
            properties = {"order_id": f"o-{self.sequence}", "revenue": revenue, "currency": "USD",
                          "offer_id": basket.get("offer_id", OFFERS[0]),
                          "products": [{"product_id": basket.get("product_id", "p-1000"), "quantity": 1}]}
        elif event == "Products Searched":
            properties = {"query": self.rng.choice(["monopoly", "chess", "lego", "puzzle"])}
        else:
            properties = {k: v for k, v in basket.items() if k in ("product_id", "price")}
        message.update({"type": "track", "event": event, "properties": properties})
        return message

    def _session(self, person: Person, when: datetime, device: int, size: int, *, signed_in: bool) -> list[dict]:
        """One visit: pages and a shop funnel (view -> add -> checkout -> order, with drop-offs)."""
        out, basket = [], {}
        step = timedelta(seconds=self.rng.uniform(5, 40))
        if signed_in:
            out.append(self._track(person, when, device, "Signed In", basket))
        stage = 0
        while len(out) < size:
            when += step
            roll = self.rng.random()
            if roll < 0.25:
                out.append(self._page(person, when, device, anonymous=False))
                continue
            if roll < 0.33:
                event = self.rng.choice(["Products Searched", "Cart Viewed", "Coupon Applied", "Wishlist Added",
                                         "Review Submitted"])
            elif stage == 0 or self.rng.random() < 0.5:
                event, stage = "Product Viewed", max(stage, 1)
            elif stage == 1:
                event, stage = ("Product Added", 2) if self.rng.random() < 0.35 else ("Product Viewed", 1)
            elif stage == 2:
                event, stage = ("Checkout Started", 3) if self.rng.random() < 0.5 else ("Cart Viewed", 2)
            else:
                event, stage = ("Order Completed", 0) if self.rng.random() < 0.6 else ("Cart Viewed", 3)
            out.append(self._track(person, when, device, event, basket))
        return out

    def _timeline(self, person: Person) -> list[dict]:
        when = person.first_seen
        if not person.identified:
            return [self._page(person, when + timedelta(seconds=20 * i), 0, anonymous=True)
                    for i in range(person.messages)]
        out: list[dict] = []
        if person.anonymous_first:
            out += [self._page(person, when + timedelta(seconds=15 * i), 0, anonymous=True) for i in range(2)]
            when += timedelta(seconds=40)
        if not person.returning:
            out.append(self._identify(person, when, 0, first=True))
            if person.account is not None:
                out.append(self._group(person, when + timedelta(seconds=1), 0))
        left = max(person.messages - len(out), 1)
        sessions = max(1, left // 8)
        span = (self.end - person.first_seen).total_seconds() - 3600
        starts = sorted(person.first_seen + timedelta(seconds=self.rng.uniform(60, span)) for _ in range(sessions))
        second = self.rng.randrange(sessions) if person.second_device else -1
        for n, begin in enumerate(starts):
            size = left // sessions + (1 if n < left % sessions else 0)
            device = 0
            if n == second:  # a new device: anonymous browsing, then sign-in merges the two profiles
                device = 1
                out += [self._page(person, begin, 1, anonymous=True)]
                begin += timedelta(seconds=30)
                out.append(self._identify(person, begin, 1, first=False))
            elif self.rng.random() < 0.1:
                out.append(self._identify(person, begin, 0, first=False))
            out += self._session(person, begin + timedelta(seconds=1), device, size, signed_in=self.rng.random() < 0.3)
        return out

    def batches(self) -> list[tuple[datetime, list[dict]]]:
        """(send time, messages) for every SDK flush in the month, in send order: each person's messages
        grouped by device session, FLUSH_AT a batch, sent at the batch's last timestamp."""
        flushes: list[tuple[datetime, list[dict]]] = []
        for person in self.persons:
            chunk: list[dict] = []
            last = None
            for message in self._timeline(person):
                when = _parse(message["timestamp"])
                gap = last is not None and (when - last > timedelta(minutes=30) or
                                            message["anonymousId"] != chunk[-1]["anonymousId"])
                if chunk and (len(chunk) == FLUSH_AT or gap):
                    flushes.append((last, chunk))
                    chunk = []
                chunk.append(message)
                last = when
            if chunk:
                flushes.append((last, chunk))
        flushes.sort(key=lambda flush: flush[0])  # stable: ties keep the order the messages were made in
        return [(when, chunk) for when, chunk in flushes if when < self.end]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)
