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

from lmmixup.errors import LmmixupError


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _composition_message(exc: BaseException) -> str:
    """The most specific single line out of a Hydra/OmegaConf composition error."""
    texts = [str(e) for e in (exc, exc.__cause__) if e is not None]
    joined = "\n".join(texts)
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
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        fail(_composition_message(e))


def report_errors(fn: Callable[[], None]) -> None:
    """Run fn; an LmmixupError becomes one line on stderr and exit code 2."""
    try:
        fn()
    except LmmixupError as e:
        if full_errors():
            raise
        fail(str(e))
