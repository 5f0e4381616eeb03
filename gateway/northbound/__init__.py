"""Northbound: what the gateway tells platforms, and in which dialect (the native JSON contract first)."""
