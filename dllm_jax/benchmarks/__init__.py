"""Benchmarks: commands that print figures for BENCHMARKS.md (never pass/fail tests)."""
