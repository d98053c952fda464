"""Journey definitions the journey tests share (API.md's cart_rescue and one of every step type)."""
from __future__ import annotations

import copy

STEPS_ARN = "arn:aws:lambda:us-east-1:123456789012:function:engage-JourneyStepsFunction"

CART_RESCUE = {
    "key": "cart_rescue", "name": "Cart rescue",
    "entry": {"audience": "cart_abandoners"},
    "reentry": {"mode": "once"},
    "exit_when": {"event": "Order Completed", "window": {"within_days": 1}},
    "start": "wait_1h",
    "steps": {
        "wait_1h": {"type": "wait", "duration": "PT1H", "next": "check"},
        "check": {"type": "split", "condition": {"trait": "email", "op": "exists"}, "true": "ab", "false": "exit"},
        "ab": {"type": "random_split", "branches": [{"percent": 50, "next": "email_a"},
                                                     {"percent": 40, "next": "email_b"},
                                                     {"percent": 10, "next": "exit"}]},
        "email_a": {"type": "send", "channel": "email", "template": "cart_a", "next": "wait_buy"},
        "email_b": {"type": "send", "channel": "email", "template": "cart_b", "next": "wait_buy"},
        "wait_buy": {"type": "wait_for_event", "event": "Order Completed", "timeout": "P2D", "next": "exit",
                     "timeout_next": "sms"},
        "sms": {"type": "send", "channel": "sms", "template": "cart_sms", "next": "exit"},
        "exit": {"type": "exit"}}}

EVERY_STEP = {
    "key": "every_step", "name": "Every step type",
    "entry": {"event": "Signed Up", "where": [{"property": "plan", "op": "eq", "value": "pro"}]},
    "reentry": {"mode": "after_exit", "cooldown": "P7D"},
    "start": "welcome_wait",
    "steps": {
        "welcome_wait": {"type": "wait", "duration": "P1DT12H", "next": "morning"},
        "morning": {"type": "wait_until", "time_of_day": "09:30", "days": ["mon", "wed"], "next": "tier"},
        "tier": {"type": "multi_split", "branches": [
            {"condition": {"trait": "plan", "op": "eq", "value": "pro"}, "next": "hold"},
            {"condition": {"event": "Order Completed"}, "next": "mark"}], "default": "sync_crm"},
        "hold": {"type": "holdout", "percent": 10, "next": "mark"},
        "mark": {"type": "update_trait", "traits": {"journey_stage": "welcomed"}, "next": "sync_crm"},
        "sync_crm": {"type": "sync", "destination": "crm", "next": "await"},
        "await": {"type": "wait_for_event", "event": "Order Completed", "timeout": "PT6H", "next": "done",
                  "timeout_next": "nudge"},
        "nudge": {"type": "send", "channel": "push", "template": "nudge", "next": "done"},
        "done": {"type": "exit"}}}


def journey(base: dict = CART_RESCUE, **changes) -> dict:
    """A deep copy of `base` with top-level changes; `steps__<id>` replaces one step."""
    data = copy.deepcopy(base)
    for name, value in changes.items():
        if name.startswith("steps__"):
            step_id = name.removeprefix("steps__")
            if value is None:
                data["steps"].pop(step_id, None)
            else:
                data["steps"][step_id] = value
        else:
            data[name] = value
    return data
