"""Fault-injection tests: real processes on a network that drops, delays and partitions."""
