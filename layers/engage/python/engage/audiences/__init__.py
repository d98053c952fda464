"""Audiences: the definition language and its pure, incremental evaluation."""
from engage.audiences.definition import (
    AudienceDefinition,
    check_references,
    parse_condition,
    parse_definition,
)

__all__ = ["AudienceDefinition", "check_references", "parse_condition", "parse_definition"]
