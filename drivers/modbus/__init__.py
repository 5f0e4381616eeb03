"""Modbus TCP (and, later, RTU) driver."""
