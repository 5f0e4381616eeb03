"""The daemon's own HTTP server: the status page for commissioning and Prometheus /metrics."""
