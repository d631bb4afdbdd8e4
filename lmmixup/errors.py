"""One exception type for every user-facing mistake.

The scripts catch `LmmixupError` and print its message as a single line (no traceback unless
HYDRA_FULL_ERROR=1), so every message must name the file, line or config key at fault.
"""


class LmmixupError(Exception):
    """A problem with the user's input, config, data or files; the message is the whole story."""


class ConfigError(LmmixupError):
    """An invalid configuration value; the message starts with the dotted config key."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError('<key>: <message>') unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
