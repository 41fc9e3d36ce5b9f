"""Benchmarks: `gridtokenx bench e2e` and one entry per stage, each next to the code it measures."""
