"""Benchmarks: scripts that print JSON figures; never run by the test suite."""
