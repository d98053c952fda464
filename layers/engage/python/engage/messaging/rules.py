"""The sender's pure rules: addresses, subscriptions, frequency caps and quiet hours. No AWS.

Space settings (ConfigTable `<space>|messaging_settings`, PUT /v1/messaging/settings):
  {"frequency_caps": {"email": {"limit": 3, "window_hours": 24}, ...},
   "quiet_hours": {"start": "21:00", "end": "08:00", "timezone_trait": "timezone", "default_timezone": "UTC"},
   "email_from": "Acme <hello@acme.example>"}
- A frequency cap allows at most `limit` non-transactional sends per profile on the channel in any
  rolling `window_hours` (the sends' own times are kept, not fixed buckets). Over the cap a message is
  suppressed (reason `frequency_cap`), as Customer.io and Braze do; transactional sends bypass caps
  and are not counted.
- Quiet hours are local to the profile (its `timezone_trait`, an IANA name, else `default_timezone`).
  A message due inside them is deferred to the end of the quiet period (the first instant local time
  reaches `end`, DST-correct through zoneinfo), never dropped. Transactional sends ignore them.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta
from email.utils import parseaddr
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from engage import clock, timezones
from engage.errors import ValidationFailed
from engage.messaging import SUBSCRIBED, UNSUBSCRIBED

EMAIL_TRAITS = ("email",)
PHONE_TRAITS = ("phone", "phone_number", "mobile")
PUSH_TRAITS = ("push_endpoint_arn", "push_endpoint")
PHONE_ID_TYPES = ("phone",)
PUSH_ID_TYPES = ("push_endpoint_arn",)


class FrequencyCap(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    limit: int = Field(ge=1, le=1000)
    window_hours: int = Field(ge=1, le=24 * 31)


MAX_TRAIT_NAME_CHARS = 256


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    start: time
    end: time
    timezone_trait: str = "timezone"
    default_timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _wall_clock(cls, value: time, info: ValidationInfo) -> time:
        # On save only: "21:00+02:00" or "08:00Z" parsed to a time with an offset, and every non-transactional
        # send of the space then raised TypeError comparing it with the profile's local time (stored ones are
        # read as saved; quiet_until uses their wall-clock time)
        if timezones.saving(info) and value.tzinfo is not None:
            raise ValueError("a wall-clock time (HH:MM) without an offset: it is read in the profile's time zone")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str, info: ValidationInfo) -> str:
        _zone(value, strict=timezones.saving(info))
        return value

    @field_validator("timezone_trait")
    @classmethod
    def _trait_name(cls, value: str, info: ValidationInfo) -> str:
        # On save only (stored settings are read as saved): 450 KB of name was a 500 from PutItem (item too
        # large), a "\ud800" escape a 500 serializing the settings
        if timezones.saving(info):
            if not 1 <= len(value) <= MAX_TRAIT_NAME_CHARS:
                raise ValueError(f"a trait name of 1 to {MAX_TRAIT_NAME_CHARS} characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("an unpaired UTF-16 surrogate (\\uD800-\\uDFFF) is not text") from None
        return value


def is_from_address(value: str) -> bool:
    """A From header value the email package can write: an address, optionally with a name, and no line
    break (one would reach the MIME header, where building the message fails inside the provider call)."""
    return "@" in parseaddr(value)[1] and not any(c in value for c in "\r\n")


class MessagingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    frequency_caps: dict[str, FrequencyCap] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    # The space's From address for email (a template's `from` wins; else the stack's EmailFromAddress).
    email_from: str | None = Field(default=None, max_length=320)

    @field_validator("email_from")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not is_from_address(value):
            raise ValueError(f"{value!r} is not an email address "
                             "(`name@example.com` or `Name <name@example.com>`)")
        return value

    @field_validator("frequency_caps")
    @classmethod
    def _channels(cls, value: dict[str, FrequencyCap]) -> dict[str, FrequencyCap]:
        unknown = set(value) - {"email", "sms", "push", "webhook"}
        if unknown:
            raise ValueError(f"unknown channel(s) {sorted(unknown)}: email, sms, push or webhook")
        return value


def parse_settings(data: Any, *, saving: bool = False) -> MessagingSettings:
    """`saving`: the rules a new save must meet (timezones); without it, what stored settings met when saved."""
    try:
        return MessagingSettings.model_validate(data, context={"saving": saving})
    except ValidationError as exc:
        details = [{"path": "$" + "".join(f".{p}" for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ValidationFailed(f"invalid messaging settings at {details[0]['path']}: {details[0]['message']}",
                               details) from None


def _zone(name: str, *, strict: bool = True) -> ZoneInfo:
    found = timezones.zone(name, strict=strict)
    if found is None:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris)")
    return found


# ---------------------------------------------------------------- addresses and subscriptions
def external_id(profile: dict[str, Any], id_types: tuple[str, ...]) -> str | None:
    for entry in profile.get("external_ids") or ():
        if entry.get("type") in id_types and entry.get("id"):
            return str(entry["id"])
    return None


def address_for(channel: str, profile: dict[str, Any], template_url: str | None = None) -> str | None:
    """Where the message goes: email trait (else email id), phone trait, push endpoint ARN, webhook URL."""
    traits = profile.get("traits") or {}
    if channel == "webhook":
        return template_url
    names, id_types = {"email": (EMAIL_TRAITS, ("email",)), "sms": (PHONE_TRAITS, PHONE_ID_TYPES),
                       "push": (PUSH_TRAITS, PUSH_ID_TYPES)}[channel]
    for name in names:
        value = traits.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return external_id(profile, id_types)


def subscription_status(profile: dict[str, Any], channel: str) -> str | None:
    entry = (profile.get("subscriptions") or {}).get(channel)
    if isinstance(entry, dict):
        entry = entry.get("status")
    return entry if entry in (SUBSCRIBED, UNSUBSCRIBED) else None


def may_send(channel: str, status: str | None, *, transactional: bool) -> bool:
    """Unsubscribed profiles get nothing but transactional messages; no status means not opted out
    (email and push: the common default of Customer.io and Segment). Webhooks have no subscription."""
    if channel == "webhook" or transactional:
        return True
    return status != UNSUBSCRIBED


# ---------------------------------------------------------------- frequency caps
def _moment(entry: str) -> datetime:
    return clock.parse(entry.split(" ", 1)[0])  # "<ISO time> <key tag>" (older entries: the time alone)


def cap_allows(cap: FrequencyCap | None, sent_at: list[str], now: datetime) -> bool:
    if cap is None:
        return True
    since = now - timedelta(hours=cap.window_hours)
    return sum(1 for entry in sent_at if _moment(entry) > since) < cap.limit


def sends_to_keep(cap: FrequencyCap | None, sent_at: list[str], now: datetime, tag: str = "") -> list[str]:
    """The counter after counting a send now: the entries still inside the window, at most `limit`."""
    if cap is None:
        return []
    since = now - timedelta(hours=cap.window_hours)
    kept = [e for e in sent_at if _moment(e) > since] + [f"{clock.iso(now)} {tag}".strip()]
    return kept[-cap.limit:]


def counted_for(sent_at: list[str], tag: str) -> bool:
    """Whether the send tagged `tag` already holds one of the counter's slots (a retry of it)."""
    return any(entry.split(" ", 1)[1:] == [tag] for entry in sent_at)


# ---------------------------------------------------------------- quiet hours
def profile_zone(quiet: QuietHours, traits: dict[str, Any]) -> ZoneInfo:
    name = traits.get(quiet.timezone_trait)
    if isinstance(name, str):
        try:
            return _zone(name)
        except ValueError:
            pass
    return timezones.zone(quiet.default_timezone, strict=False) or _zone("UTC")


def _inside(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # the period crosses midnight


def quiet_until(quiet: QuietHours | None, traits: dict[str, Any], now: datetime) -> datetime | None:
    """The end of the quiet period `now` falls in for this profile (UTC), or None when sending is fine."""
    if quiet is None:
        return None
    zone = profile_zone(quiet, traits)
    local = now.astimezone(zone)
    start, end_time = quiet.start.replace(tzinfo=None), quiet.end.replace(tzinfo=None)  # wall-clock (see _wall_clock)
    if not _inside(local.timetz().replace(tzinfo=None), start, end_time):
        return None
    day = local.date() if local.time() < end_time else local.date() + timedelta(days=1)
    end = datetime.combine(day, end_time)
    # Wall-clock `end` in the zone; if a DST gap skips it, fold=0 resolves it to the instant after the gap.
    resolved = end.replace(tzinfo=zone)
    utc = resolved.astimezone(ZoneInfo("UTC"))
    if utc.astimezone(zone).replace(tzinfo=None) != end:  # nonexistent local time (spring forward)
        utc = (end - timedelta(hours=1)).replace(tzinfo=zone).astimezone(ZoneInfo("UTC")) + timedelta(hours=1)
    elif utc <= now:
        # An end that happens twice (fall back) and whose first time has passed: the period ends the second
        # time. Before, `until` was in the past: asked again at once, the send was deferred again, every second
        # for the repeated hour (a broadcast's recipient re-queued with no delay each time).
        utc = end.replace(tzinfo=zone, fold=1).astimezone(ZoneInfo("UTC"))
    return utc
