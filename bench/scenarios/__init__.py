"""One module per benchmark scenario; each exposes `run(context) -> list[Figure]`."""
