"""python -m lmmixup.downstream distilled=DIR [out=DIR] [sets=[full,mix]] [benchmarks=[...]]
[eval.limit=N] [experiment=smoke|paper] [key=value ...]

Hydra-configured like train.py (conf/downstream/downstream.yaml, schema in
lmmixup/downstream/config.py); a typo or a wrong type is one `error:` line, exit code 2.
What it does and writes: lmmixup/downstream/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.config import to_typed_config
from lmmixup.downstream.config import register_configs
from lmmixup.downstream.run import run

CONF = Path(__file__).resolve().parent.parent.parent / "conf" / "downstream"

register_configs()


@hydra.main(version_base=None, config_path=str(CONF), config_name="downstream")
def main(dcfg: DictConfig) -> None:
    report_errors(lambda: run(to_typed_config(dcfg)))


if __name__ == "__main__":
    precheck_overrides(sys.argv[1:], CONF, "downstream", register_configs)
    main()
