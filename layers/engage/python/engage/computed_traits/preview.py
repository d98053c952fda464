"""Preview a computed trait before saving it: its value on a sample of profiles.

Reads a bounded sample of the space's profiles (engage.audiences.preview.sample_profiles), computes
the value of each from its event history exactly as the backfill does, and reports how many have a
value and the first few values. Nothing is written.
"""
from __future__ import annotations

from typing import Any

from engage import clock
from engage.audiences import preview as audience_preview
from engage.audiences import runtime as audience_runtime
from engage.audiences.aggregates import to_ms
from engage.computed_traits import aggregates
from engage.computed_traits.definition import ComputedTraitDefinition
from engage.errors import ValidationFailed

SHOWN = 20


def preview(space_id: str, definition: ComputedTraitDefinition, sample_size: int) -> dict[str, Any]:
    if not 1 <= sample_size <= audience_preview.MAX_SAMPLE:
        raise ValidationFailed(f"sample must be between 1 and {audience_preview.MAX_SAMPLE}",
                               [{"path": "sample", "value": sample_size}])
    now_ms = to_ms(clock.now())
    index = aggregates.TraitIndex([definition])
    spec = index.specs[0]
    profiles, exhaustive = audience_preview.sample_profiles(space_id, definition.entity, sample_size)
    with_value = []
    for record in profiles:
        history = audience_runtime.history(space_id, record.profile_id, audience_preview.HISTORY_LIMIT)
        state = aggregates.build_state(history, index)
        value = aggregates.value_at(spec, state.get(spec.id), now_ms)
        if value is not None:
            with_value.append({"profile_id": record.profile_id, "value": value})
    return {"sampled": len(profiles), "exact": exhaustive, "with_value": len(with_value),
            "sample": with_value[:SHOWN]}
