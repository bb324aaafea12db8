"""Bench executors beyond the core's local one (``noisesearch bench --executor NAME``)."""
