"""Community edge gateway: field devices in, alarms and summaries out, nothing lost on the way."""

__version__ = "0.1.0"
