"""Journeys: the definition language (definition, compiler) and its runtime (store, enrollment, steps...).

Light on purpose: the runtime modules import the definition language (pydantic) only where they parse one.
"""
import re

# Here so the store checks a key, and the steps function reads a wait_until's days, without loading the
# definition language.
KEY_PATTERN = re.compile(r"^[a-z0-9_]{1,64}$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
