"""Fire alarm control panels that print one text line per event on a serial port."""
