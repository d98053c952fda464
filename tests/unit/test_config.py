import pytest

from engage import config


@pytest.fixture
def fresh_settings():
    config.settings.cache_clear()
    yield config.settings
    config.settings.cache_clear()


def test_settings_read_names_and_whole_numbers_from_the_environment(monkeypatch, fresh_settings):
    monkeypatch.setenv("EVENTS_TABLE", "engage-events")
    monkeypatch.setenv("EVENT_RETENTION_DAYS", "30")
    monkeypatch.delenv("DUE_SHARDS", raising=False)
    settings = fresh_settings()
    assert settings.events_table == "engage-events"
    assert settings.event_retention_days == 30
    assert settings.due_shards == 16  # unset: the default


def test_a_setting_that_is_not_a_number_is_named(monkeypatch, fresh_settings):
    monkeypatch.setenv("CREDENTIAL_CACHE_SECONDS", "soon")
    with pytest.raises(ValueError, match="CREDENTIAL_CACHE_SECONDS must be a whole number, not 'soon'"):
        fresh_settings()


def test_require_names_the_missing_variable(monkeypatch, fresh_settings):
    monkeypatch.delenv("LINKS_TABLE", raising=False)
    with pytest.raises(RuntimeError, match="LINKS_TABLE is not set"):
        fresh_settings().require("links_table")
