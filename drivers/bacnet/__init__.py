"""BACnet/IP: configured devices and points, ReadPropertyMultiple, change-of-value, prioritised writes."""
