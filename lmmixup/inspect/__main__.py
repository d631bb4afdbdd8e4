"""Inspect GRPO runs.

    python -m lmmixup.inspect RUN_DIR [--step S] [--top K]    terminal report (rich)
    python -m lmmixup.inspect RUN_DIR --plot                  + PNGs in RUN_DIR/inspect/
    python -m lmmixup.inspect RUN_DIR --html                  + RUN_DIR/inspect/report.html
    python -m lmmixup.inspect RUN_DIR --compare RUN2 RUN3     overlay runs (table and plots)
    python -m lmmixup.inspect --sweep MULTIRUN_DIR            a cell per job, heat-maps, summary

This is a read-only viewer of folders train.py wrote, so it takes paths and switches (argparse,
as `python -m lmmixup.rewards` does) rather than composing a Hydra config: there is nothing to
compose, and `RUN_DIR --html` reads as the issue's interface. Bad input (not a run folder, a
step without a dump) is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console

from lmmixup.cli import report_errors
from lmmixup.errors import LmmixupError


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lmmixup.inspect", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a train.py run folder")
    p.add_argument("--step", type=int, default=None,
                   help="step whose groups are shown (default: the last dumped step)")
    p.add_argument("--top", type=int, default=3, help="groups shown: the widest advantage spread")
    p.add_argument("--chars", type=int, default=240, help="characters shown of each completion")
    p.add_argument("--plot", action="store_true", help="write PNGs (rewards, KL, entropy, ...)")
    p.add_argument("--html", action="store_true", help="write one self-contained report.html")
    p.add_argument("--compare", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                   help="overlay these runs on RUN_DIR's plots and compare them in a table")
    p.add_argument("--sweep", type=Path, default=None, metavar="MULTIRUN_DIR",
                   help="a Hydra multirun folder (hydra.sweep.dir): table, heat-maps, summary")
    p.add_argument("--out", type=Path, default=None,
                   help="where PNGs, report.html and sweep files go (default: <dir>/inspect)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 120))
    if args.sweep is not None:
        # lazy: the readers load torch (~2 s), so --help and a missing RUN_DIR answer at once
        from lmmixup.inspect import sweep

        cells = sweep.load_sweep(args.sweep)
        out = args.out or args.sweep / "inspect"
        console.print(sweep.sweep_table(cells))
        written = sweep.write_summary(cells, out) + sweep.write_heatmaps(cells, out)
        for path in written:
            console.print(f"wrote {path}")
        if args.run_dir is None:
            return
    if args.run_dir is None:
        raise LmmixupError("name a RUN_DIR (or --sweep MULTIRUN_DIR)")
    # lazy: as sweep's above
    from lmmixup.inspect import terminal
    from lmmixup.inspect.load import load_run

    run = load_run(args.run_dir)
    compared = [load_run(p) for p in args.compare]
    if args.step is not None and args.step not in run.dumps:
        raise LmmixupError(f"--step {args.step}: {run.path} has no rollout dump for it "
                           f"(dumped steps: {sorted(run.dumps) or 'none'})")
    terminal.report(run, console, step=args.step, top_k=args.top, chars=args.chars)
    if compared:
        console.print(terminal.compare_table([run, *compared]))
    out = args.out or run.path / "inspect"
    pngs = {}
    if args.plot:
        from lmmixup.inspect.plots import write_plots  # lazy: matplotlib, only --plot

        for path in write_plots([run, *compared], out):
            console.print(f"wrote {path}")
            pngs[path.stem[len("inspect_"):]] = path.read_bytes()
    if args.html:
        from lmmixup.inspect.html import write_html  # lazy: matplotlib, only --html

        console.print(f"wrote {write_html(run, out / 'report.html', compare=compared, pngs=pngs)}")


if __name__ == "__main__":
    report_errors(lambda: main(sys.argv[1:]))
