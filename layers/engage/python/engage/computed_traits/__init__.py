"""Computed traits (docs/computed-traits.md): per-profile values computed from events, in real time.

definition  the definition language (API.md "Computed trait definition") and its validation
aggregates  pure: per-day buckets kept on the profile, the value at a moment, the next window edge
store       definitions in ConfigTable, status and backfill bookkeeping, the warm-container cache
runtime     the space's compiled definitions for the stream pipeline; the sweeper's refresh
backfill    the backfill/recompute page (run by the audience backfill state machine)
management  the management API operations
events      `Computed Trait Changed` on the bus
"""
