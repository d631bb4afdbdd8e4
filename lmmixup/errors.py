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


def brief(exc: BaseException, limit: int = 160) -> str:
    """'<Type>: <first sentence>' of a library exception, for one-line messages.

    Library errors can run to pages (transformers lists every model type it knows; torch adds
    advice after its first sentence); the first sentence is the part that names the problem."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    sentence = text.split(". ", 1)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[: limit - 3] + "..."
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__
