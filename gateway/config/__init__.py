"""Configuration: one pydantic model tree loaded from TOML, with errors that point at the line."""

from gateway.config.loader import ConfigError, ConfigProblem, check_file, load_config
from gateway.config.schema import GatewayConfig

__all__ = ["ConfigError", "ConfigProblem", "GatewayConfig", "check_file", "load_config"]
