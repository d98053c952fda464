"""`make bench`: speed and cost of Engage, measured the same way run to run (BENCHMARKS.md)."""
