"""engage.timezones: IANA zone names only, where ZoneInfo also loads the host's `localtime` and the
database's `posix/` and `right/` copies (the `right/` ones 27 s off everyone's clock)."""
from __future__ import annotations

import pytest

from engage import timezones
from engage.broadcasts.definition import parse_definition as parse_broadcast
from engage.errors import ValidationFailed
from engage.journeys.steps import zone_of
from engage.messaging import rules

NOT_ZONES = ["localtime", "posixrules", "Factory", "right/Europe/Paris", "posix/UTC", "Mars/Olympus", "",
             "../etc/passwd", "Europe", "E" * 65]


@pytest.mark.parametrize("name", NOT_ZONES)
def test_what_is_not_an_iana_zone_name_is_none(name):
    assert timezones.zone(name) is None


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_iana_zone_names_are_zones(name):
    assert timezones.zone(name).key == name


def test_what_was_stored_before_stays_readable():
    # A space's settings saved with `localtime` before the rule still load (sends go on, in UTC's stead
    # the host's zone as before); a new save of them is refused
    stored = {"quiet_hours": {"start": "21:00", "end": "08:00", "default_timezone": "localtime"}}
    assert rules.parse_settings(stored).quiet_hours.default_timezone == "localtime"
    with pytest.raises(ValidationFailed, match="unknown time zone 'localtime'"):
        rules.parse_settings(stored, saving=True)


@pytest.mark.parametrize("name", ["localtime", "right/Europe/Paris"])
def test_a_new_broadcast_or_a_profiles_trait_naming_one_is_refused_or_ignored(name):
    with pytest.raises(ValidationFailed) as refused:
        parse_broadcast({"key": "b", "audience": "a", "channel": "email", "template": "t",
                         "default_timezone": name})
    assert refused.value.details[0]["path"] == "$.default_timezone"
    assert zone_of({"timezone": name}, "timezone").key == "UTC"
