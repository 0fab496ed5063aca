"""Profiling aids for the benchmarks (not imported by policyfabric)."""
