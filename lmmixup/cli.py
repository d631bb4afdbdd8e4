"""Command-line plumbing shared by the scripts: one-line errors instead of tracebacks.

Hydra reports a bad override (unknown key, wrong type) in several lines of its own before our
code runs. `precheck_overrides` composes the config first with the same overrides and turns any
composition error into a single `error: <key>: <reason>` line and exit code 2.
HYDRA_FULL_ERROR=1 restores the full traceback everywhere.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, List

from lmmixup.errors import ConfigError, LmmixupError


RENAMED_KEYS = {"rollout.dtype": "precision.rollout"}
"""keys an earlier version had -> where the setting lives now (issue 22 made the sampler's
precision part of one precision group); an old command line gets a line naming the new key"""


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _shown(config_dir: Path) -> str:
    """A config folder as a user types it: relative to the repository when inside it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return str(Path(config_dir).resolve().relative_to(repo))
    except ValueError:
        return str(config_dir)


def composition_message(exc: BaseException, config_dir: Path) -> str:
    """The most specific single line out of a Hydra/OmegaConf composition error."""
    texts = [str(e) for e in (exc, exc.__cause__) if e is not None]
    joined = "\n".join(texts)
    missing = re.search(r"Could not find '(.+)/([^/']*)'", joined)
    if missing:  # `model=nope`: name the choices, not Hydra's search path
        group, name = missing.groups()
        options = re.search(rf"Available options in '{re.escape(group)}':\n((?:\t.*\n?)*)", joined)
        choices = ", ".join(o.strip() for o in options.group(1).splitlines()) if options else ""
        return (f"{group}={name}: no such option in {_shown(config_dir)}/{group}/"
                + (f"; available: {choices}" if choices else ""))
    append = re.search(r"To append to your config use (\+\S+)", joined)
    if append and "is not in struct" in joined:  # a new key of a dict, e.g. reward.weights.x=1
        key = append.group(1)[1:].split("=", 1)[0]
        return f"{key}: not in the config; add a new key with a leading +: {append.group(1)}"
    key = re.search(r"full_key:\s*(\S+)", joined)
    reasons = [line.strip() for t in texts for line in t.splitlines()
               if line.strip() and not line.strip().startswith(("full_key", "object_type",
                                                                 "reference_type", "To append"))]
    reason = next((r for r in reasons
                   if not r.startswith(("Could not override", "Error merging override"))), reasons[0])
    return f"{key.group(1)}: {reason}" if key else reason


def precheck_overrides(argv: List[str], config_dir: Path, config_name: str,
                       register: Callable[[], None]) -> None:
    """Compose once with the command line's overrides; exit with one line if that fails.

    Sweeps (-m) and Hydra's own flags are left to Hydra: sweep values are not plain overrides.
    """
    if full_errors() or any(a in ("-m", "--multirun") or a.startswith("--") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith(("hydra.", "-"))]
    # lazy: hydra (~0.2 s) loads only to compose a config; `python -m lmmixup.inspect` imports
    # this module for report_errors alone
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    for override in overrides:  # name the override that does not parse: Hydra only says where
        try:
            parsed = parser.parse_override(override)
        except HydraException as e:
            fail(f"{override}: not a valid override ({str(e).splitlines()[0]})")
        key = parsed.key_or_group.lstrip("+~")
        if key in RENAMED_KEYS:
            fail(f"{key}: renamed to {RENAMED_KEYS[key]} (auto, fp32 or bf16), e.g. "
                 f"{RENAMED_KEYS[key]}={parsed.value()}")
    register()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        fail(composition_message(e, config_dir))


def report_errors(fn: Callable[[], None]) -> None:
    """Run fn; an LmmixupError becomes one line on stderr and exit code 2."""
    try:
        fn()
    except LmmixupError as e:
        if full_errors():
            raise
        fail(str(e))


def parse_key_values(schema, argv: List[str]):
    """`key=value` arguments (dotted for nested keys) onto a config dataclass, validated.

    Unknown keys and wrong types become one-line ConfigErrors naming the key."""
    # lazy: omegaconf (~0.1 s), as precheck_overrides's hydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"{arg}: arguments are key=value")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(f"{key}: {first}" if key else first) from None
    cfg.validate()
    return cfg
