"""The engagement scenarios' workloads are what their figures say they are."""
from bench import workload
from bench.scenarios import computed_traits_cost, messaging_cost
from engage.computed_traits.management import validate
from engage.messaging import templates


def test_computed_trait_workload_is_twenty_valid_definitions_over_the_traffics_events():
    # Given the scenario's 20 definitions
    specs = computed_traits_cost.computed_traits(computed_traits_cost.TRAITS)
    # Then each passes the API's validation, keys are distinct, and each reads an event the traffic sends
    definitions = [validate(spec) for spec in specs]
    assert len({d.key for d in definitions}) == 20
    assert {d.event for d in definitions} <= set(workload.TRACK_EVENTS)
    assert len({d.kind for d in definitions}) == len(computed_traits_cost.KINDS)


def test_messaging_yardstick_renders_what_the_sender_renders():
    # Given the scenario's template and one profile's scope
    scope = templates.scope_for({"traits": {"first_name": "<Ann>"}}, unsubscribe_url="https://u.test/x")
    rendered = templates.render(templates.parse_template(messaging_cost.WELCOME), scope)
    # Then the sender's output carries the escaped name and the link (the yardstick renders the same fields)
    assert rendered.subject == "Welcome <Ann>"
    assert "<p>Hi &lt;Ann&gt;</p>" in rendered.body and "https://u.test/x" in rendered.body


def test_realistic_space_has_the_shape_its_figures_claim():
    from datetime import UTC, datetime

    from bench import space

    # Given a month of 1,000 persons
    traffic = space.Space(1_000, datetime(2030, 1, 1, tzinfo=UTC))
    flushes = traffic.batches()
    messages = [m for _, chunk in flushes for m in chunk]
    volumes = sorted(p.messages for p in traffic.persons)
    # Then activity is long-tailed: most send a few, a few send hundreds
    assert volumes[len(volumes) // 2] <= 5 and volumes[-1] >= 200
    # And there are anonymous-only persons, anonymous-then-identified ones (merges), and group calls
    users = {m.get("userId") for m in messages}
    anonymous_only = {m["anonymousId"] for m in messages} - {m["anonymousId"] for m in messages if "userId" in m}
    assert anonymous_only and None in users and any(m["type"] == "group" for m in messages)
    # And batches are analytics.js flushes, in send order, inside the 30 days, each message once
    assert all(1 <= len(chunk) <= space.FLUSH_AT for _, chunk in flushes)
    assert [when for when, _ in flushes] == sorted(when for when, _ in flushes)
    assert all(traffic.start <= when < traffic.end for when, _ in flushes)
    assert len({m["messageId"] for m in messages}) == len(messages)


def test_realistic_second_month_is_the_same_space_a_month_on():
    from datetime import UTC, datetime

    from bench import space

    # Given a month of 1,000 persons and the month after it
    first = space.Space(1_000, datetime(2030, 1, 1, tzinfo=UTC))
    before = first.batches()
    later = first.next_month()
    flushes = later.batches()
    messages = [m for _, chunk in flushes for m in chunk]
    known = {p.index for p in first.persons if p.identified}
    returning = [p for p in later.persons if p.returning]
    # Then identified persons come back (not all), anonymous visitors do not, and new persons arrive
    assert 0.4 * len(known) < len(returning) < 0.8 * len(known)
    assert {p.index for p in returning} <= known
    assert sum(not p.returning for p in later.persons) == 250
    assert min(p.index for p in later.persons if not p.returning) == 1_000
    # And a returning person signs in with the ids of the first month: no first identify, no new account join
    old_ids = {(m["anonymousId"], m.get("userId")) for _, chunk in before for m in chunk}
    mine = [m for m in messages if m.get("userId") == f"user-{returning[0].index:05d}"]
    assert mine and {(m["anonymousId"], m["userId"]) for m in mine if m["anonymousId"].endswith(
        f"-0-{returning[0].index * 7919 % 100000:05d}")} <= old_ids
    assert not any(m["type"] == "group" and m.get("userId") in {f"user-{p.index:05d}" for p in returning}
                   for m in messages)
    # And it is the next 30 days, its messageIds new, and the first month's messages unchanged by it
    assert all(later.start <= when < later.end for when, _ in flushes) and later.start == first.end
    assert not {m["messageId"] for m in messages} & {m["messageId"] for _, chunk in before for m in chunk}
    assert len({m["messageId"] for m in messages}) == len(messages)
    assert space.Space(1_000, datetime(2030, 1, 1, tzinfo=UTC)).batches() == before


def test_realistic_audiences_are_valid_and_cover_every_family():
    from bench import space
    from engage.audiences import parse_definition

    specs = space.audiences(100)
    definitions = [parse_definition(spec).to_dict() for spec in specs]
    assert len({d["key"] for d in definitions}) == 100
    assert sum(1 for d in definitions if d.get("entity") == "accounts") == 10
    text = str(specs)
    for form in ("'funnel'", "'where'", "'audience'", "'within_hours'", "'between_days'", "'users'"):
        assert form in text


def test_profile_floor_counts_only_the_bytes_that_changed():
    from bench.scenarios.realistic_cost import changed_bytes

    old = {"pk": {"S": "p1"}, "daily_counts": {"M": {"Signed In": {"M": {"20300101": {"N": "1"}}}}}}
    new = {"pk": {"S": "p1"}, "daily_counts": {"M": {"Signed In": {"M": {"20300101": {"N": "2"}}}}}}
    # one number inside nested maps: its name and value, plus the names of the maps on the way
    assert changed_bytes(old, new) == len("daily_counts") + 1 + len("Signed In") + 1 + len("20300101") + 2
    assert changed_bytes(new, new) == 0
