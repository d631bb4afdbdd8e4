"""Checkpoints that a kill at any moment cannot corrupt, and exact resume.

Layout of one checkpoint, <run_dir>/checkpoints/step_000012/:
    model.safetensors   policy weights (safetensors: no pickle on load)
    trainer.pt          optimizer + scheduler state, torch RNG states (loaded with weights_only=True)
    meta.json           step, data-sampler position, Python/numpy RNG states, model identity,
                        the config fingerprint; written last
    config.yaml         the resolved config of the run
    hf/                 (checkpoint.save_hf=true) a save_pretrained folder usable as model.name_or_path
    rng_ranks.pt        (torchrun) every rank's RNG states
    dcp/                (dist.strategy=fsdp2) model + optimizer shards, torch.distributed.checkpoint,
                        instead of model.safetensors and the optimizer part of trainer.pt
A checkpoint is built in a hidden temporary folder and renamed into place, so a folder named
step_* is always complete; half-written ones (".tmp-*") are never picked and are cleaned up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from lmmixup.errors import LmmixupError, brief, require

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class CheckpointConfig:
    every: int = 0
    """save every N steps (0 = only at the end and on SIGTERM/SIGINT)"""
    keep_last: int = 2
    """how many checkpoints to keep; older ones are deleted after a new one lands"""
    save_hf: bool = False
    """also write a save_pretrained folder (hf/) inside each checkpoint"""

    def validate(self) -> None:
        require(self.every >= 0, "checkpoint.every", "must be >= 0")
        require(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")


# Config keys that may differ between a run and its resume without changing the trajectory.
# Not `steps`: the lr schedule's horizon is steps x updates per step, so a new `steps` would move
# the warm-up and the cosine under the resumed run. Not `device`: CPU and CUDA draw different
# random streams (train.py fingerprints the resolved device, so auto -> cpu on a CPU is fine).
# `dist` too: what of it changes the trajectory (the resolved sampling_rng, the world size) is
# fingerprinted by train.py unless it is one process with global sampling (the default before
# sampling_rng=auto meant group for the static engine), so those checkpoints resume with
# dist.sampling_rng=global, and a resume that would sample otherwise names the key.
RESUMABLE_CHANGES = ("resume", "logger", "checkpoint", "eval_every", "dist")


def config_fingerprint(config: Dict[str, Any]) -> Dict[str, str]:
    """Flattened key -> value text for every key that must match on resume."""
    flat: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = json.dumps(node, sort_keys=True)

    walk("", {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES})
    return flat


def model_identity(model: torch.nn.Module) -> str:
    """A hash of parameter names and shapes: equal for the same architecture."""
    text = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: Dict[str, Any], torch_states: Dict[str, torch.Tensor]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch_states["cpu"])
    if torch.cuda.is_available() and "cuda" in torch_states:
        torch.cuda.set_rng_state_all(list(torch_states["cuda"]))


def checkpoints_in(run_dir: Path) -> List[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)
             and (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def rank_rng_state() -> Dict[str, Any]:
    """This process's RNG states (Python, numpy, torch CPU [+ CUDA]), for rng_ranks.pt."""
    state: Dict[str, Any] = {**rng_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def new_checkpoint_folder(run_dir: Path, step: int) -> Path:
    """The hidden temporary folder a checkpoint of `step` is built in (renamed when complete)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))


@dataclass
class TrainState:
    """What a checkpoint saves and a resume restores, in one object (the idea of Meta's lingua).

    The RNG states are not fields: they belong to the process, and save_checkpoint reads them
    (rank_rng_state) where load_checkpoint sets them back."""

    step: int  # the last finished step (0 before the first)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch lr scheduler (optim.build_scheduler)
    sampler: Any  # the prompt sampler (data.prompts.PromptSampler): state_dict() is its position


def save_checkpoint(run_dir: Path, state: TrainState, *, config: Dict[str, Any], config_yaml: str,
                    cfg: CheckpointConfig, rank_rng: Optional[List[Dict[str, Any]]] = None,
                    prepared: Optional[Path] = None) -> Path:
    """Write `state` as <run_dir>/checkpoints/step_<state.step> (the module docstring's layout).
    config: the run's resolved config (its fingerprint is checked on resume); config_yaml: the
    same, as written to config.yaml. rank_rng: under torchrun, every rank's `rank_rng_state()`
    (rank 0 writes them all to rng_ranks.pt; resume gives each rank its own back). prepared: a
    `new_checkpoint_folder` that already holds the model and optimizer shards in dcp/ (FSDP2;
    every rank wrote its own)."""
    step, model = state.step, state.model
    root = run_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = prepared if prepared is not None else new_checkpoint_folder(run_dir, step)
    try:
        if prepared is None:
            save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch_states = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            torch_states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        optimizer_state = ({} if prepared is not None
                           else {"optimizer": state.optimizer.state_dict()})
        torch.save({**optimizer_state, "scheduler": state.scheduler.state_dict(),
                    "torch_rng": torch_states}, tmp / "trainer.pt")
        if rank_rng is not None:
            torch.save(rank_rng, tmp / "rng_ranks.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        if cfg.save_hf:
            model.save_pretrained(tmp / "hf", safe_serialization=True)
        meta = {"step": step, "sampler": state.sampler.state_dict(), "rng": rng_state(),
                "model_identity": model_identity(model),
                "config_fingerprint": config_fingerprint(config)}
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints_in(run_dir)[: -cfg.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find_resume_checkpoint(resume: str, run_dir: Path) -> Optional[Path]:
    """resume='' -> None; 'auto' -> newest complete checkpoint in run_dir (or None);
    a path -> that checkpoint, which must be complete."""
    if not resume:
        return None
    if resume == "auto":
        found = checkpoints_in(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not path.exists():
        raise LmmixupError(f"resume: {resume!r} does not exist")
    if not (path / "meta.json").exists():
        found = checkpoints_in(path)
        hint = (f"; it is a run folder: pass resume=auto hydra.run.dir={resume} or "
                f"resume={found[-1]}") if found else ""
        raise LmmixupError(f"resume: {resume!r} is not a complete checkpoint folder "
                           f"(no meta.json){hint}")
    return path


_META_KEYS = ("step", "sampler", "rng", "model_identity", "config_fingerprint")


def _describe_changes(keys: List[str], ours: Dict[str, str], theirs: Dict[str, str],
                      shown: int = 3) -> str:
    """'algo.beta=0.2 (checkpoint: 0.0), ...' for the first few differing keys."""
    parts = [f"{k}={ours.get(k, 'unset')} (checkpoint: {theirs.get(k, 'unset')})"
             for k in keys[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(parts) + more


def load_checkpoint(path: Path, state: TrainState, *, config: Dict[str, Any], rank: int = 0,
                    load_sharded: Optional[Callable[[Path], None]] = None) -> TrainState:
    """Restore everything a checkpoint holds into `state` (and return it), after checking it fits
    this run: config is the run's resolved config, compared with the checkpoint's fingerprint.
    rank > 0 (under torchrun) restores that rank's own RNG states from rng_ranks.pt.
    load_sharded (FSDP2, on every rank): loads the model and optimizer shards from <path>/dcp
    instead."""
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LmmixupError(f"{path / 'meta.json'}: unreadable checkpoint metadata ({e})") from None
    missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise LmmixupError(f"{path / 'meta.json'}: not checkpoint metadata (missing "
                           f"{', '.join(missing)})")
    ours, theirs = config_fingerprint(config), meta["config_fingerprint"]
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if meta["model_identity"] != model_identity(model):
        model_keys = [k for k in differing if k.startswith("model.")]
        what = (_describe_changes(model_keys, ours, theirs) if model_keys else
                f"model.name_or_path={config['model']['name_or_path']!r} has other parameter "
                "names or shapes")
        raise LmmixupError(f"{path}: checkpoint is from a different model architecture: {what}")
    if differing:
        raise LmmixupError(f"{path}: checkpoint was written with a different config: "
                           f"{_describe_changes(differing, ours, theirs)}; resume with the "
                           "same settings or start a new run")
    # Both files are read before any state is restored: a bad file leaves nothing half-loaded.
    weights_file, trainer_file = path / "model.safetensors", path / "trainer.pt"
    if load_sharded is not None:
        weights_file = path / "dcp" / ".metadata"  # torch.distributed.checkpoint's index
    for file in (weights_file, trainer_file):
        if not file.is_file():
            raise LmmixupError(f"{file}: missing; the checkpoint is incomplete")
    try:
        trainer = torch.load(trainer_file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LmmixupError(f"{trainer_file}: cannot load trainer state, the file is truncated "
                           f"or corrupt ({brief(e)})") from None
    try:
        if load_sharded is not None:
            load_sharded(weights_file.parent)  # model and optimizer
        else:
            load_model(model, str(weights_file))
    except Exception as e:
        raise LmmixupError(f"{weights_file}: cannot load weights, the file is truncated or "
                           f"corrupt ({brief(e)})") from None
    try:
        if load_sharded is None:
            optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
    except (KeyError, TypeError, ValueError) as e:
        raise LmmixupError(f"{trainer_file}: optimizer state does not fit this run "
                           f"({brief(e)})") from None
    if rank == 0:
        set_rng_state(meta["rng"], trainer["torch_rng"])
    else:
        try:
            mine = torch.load(path / "rng_ranks.pt", map_location="cpu", weights_only=True)[rank]
        except (OSError, IndexError, RuntimeError) as e:
            raise LmmixupError(f"{path / 'rng_ranks.pt'}: no RNG state for rank {rank} "
                               f"({brief(e)})") from None
        torch_states = {"cpu": mine["torch_cpu"]}
        if "torch_cuda" in mine:
            torch_states["cuda"] = mine["torch_cuda"]
        set_rng_state(mine, torch_states)
    state.sampler.load_state_dict(meta["sampler"])
    state.step = meta["step"]
    return state
