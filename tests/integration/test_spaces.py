import pytest

from engage import spaces
from engage.errors import AuthenticationFailed, Conflict, ValidationFailed


def test_secrets_are_stored_hashed_and_authenticate_to_their_space(aws, space):
    # Given a space created with known secrets
    items = aws.table("ConfigTable").scan()["Items"]
    stored = repr(items)
    # Then neither secret is stored in clear
    assert "acme-write-key" not in stored and "acme-access-token" not in stored
    # And each authenticates only as its own kind
    assert spaces.authenticate("acme-write-key", spaces.WRITE_KEY) == "acme"
    assert spaces.authenticate("acme-access-token", spaces.ACCESS_TOKEN) == "acme"
    with pytest.raises(AuthenticationFailed, match="invalid access token"):
        spaces.authenticate("acme-write-key", spaces.ACCESS_TOKEN)
    with pytest.raises(AuthenticationFailed, match="no write key"):
        spaces.authenticate("", spaces.WRITE_KEY)


def test_space_ids_are_unique_and_validated(aws, space):
    with pytest.raises(Conflict, match="already exists"):
        spaces.create_space("acme")
    with pytest.raises(ValidationFailed, match="must match"):
        spaces.create_space("Bad Space!")


def test_generated_secrets_are_random(aws):
    first = spaces.create_space("one")
    second = spaces.create_space("two")
    assert first.write_key != second.write_key
    assert first.write_key.startswith("wk_") and first.access_token.startswith("at_")
    assert len(first.write_key) > 40
