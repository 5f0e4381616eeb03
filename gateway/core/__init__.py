"""The kernel: the data model, neutral types, errors and small shared helpers.

Everything in the project may import ``gateway.core``; ``gateway.core`` imports nothing else from
the project. Drivers, rules and models import only this package from ``gateway``.
"""
