"""Data rights (GDPR/CCPA): erase a person everywhere, suppress their ids (docs/privacy.md).

- `erase`: find the whole merged person from any of their ids, and delete what the system
  holds about them, store by store; every step is idempotent (a replay deletes nothing twice
  and emits nothing twice), so a crashed run is simply run again.
- `suppression`: hashed ids whose new events are accepted and dropped until unsuppressed.
"""
