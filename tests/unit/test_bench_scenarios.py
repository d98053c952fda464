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
