"""Every default lives once: in the schema dataclass, and YAML only overrides it, saying why.

The convention, checked for every YAML file under conf/:
- A root config (conf/config.yaml, conf/distill.yaml, ...: the file that names a registered
  schema first in its `defaults`) holds no defaults. A key it lists must differ from the schema's
  default, or it is a second copy that can drift from the first.
- A key whose value differs from the schema's default says why in a comment: on the key's line,
  in the comment lines directly above it (no blank line between), or the same on a parent key
  (a comment above `precision:` covers `precision.train`). This holds in root configs and in
  option files (conf/<group>/<option>.yaml, experiment presets) alike.
- An option file may restate a schema default: an option names a whole variant (conf/algo/grpo.yaml
  is GRPO whatever AlgoConfig's defaults become), and this test flags the day the schema moves
  away from it, because the restated value then differs without a reason.
- Entries of a free-form mapping (`reward.weights`, default {}) are data, not defaults.
So a reader of the schema is told the value a run uses unless the YAML says otherwise, and why.
"""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import ROOT
from lmmixup import config, pipeline
from lmmixup.data import build_mixture
from lmmixup.distill.config import register_distill_configs
from lmmixup.downstream import config as downstream_config

CONF = ROOT / "conf"
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*)\s*:(.*)$")
_ABSENT = object()
_SKIPPED = ("defaults", "hydra")  # Hydra's own keys: composition, not schema values


def _register_all() -> None:
    config.register_configs()
    register_distill_configs()
    downstream_config.register_configs()
    build_mixture.register_configs()
    pipeline.register_configs()


def _schema(name: str) -> DictConfig:
    return ConfigStore.instance().load(f"{name}.yaml").node


def _defaults(path: Path) -> list:
    return list(OmegaConf.load(path).get("defaults", []))


def _roots() -> list:
    """(root yaml, schema name) for every file under conf/ whose defaults start with a schema."""
    _register_all()
    names = {n[:-len(".yaml")] for n in ConfigStore.instance().list("")}
    roots = []
    for path in sorted(CONF.rglob("*.yaml")):
        first = _defaults(path)[:1]
        if first and isinstance(first[0], str) and first[0] in names:
            roots.append((path, first[0]))
    return roots


def _files_to_check() -> list:
    """(yaml, schema name, key prefix, is_root) for every root config and every option of the
    config groups its defaults name (an `@package _global_` option writes to the root)."""
    checks = []
    for root, schema in _roots():
        checks.append((root, schema, "", True))
        for entry in _defaults(root):
            if not isinstance(entry, (dict, DictConfig)):
                continue
            for group in entry:
                if group.startswith("override "):
                    continue
                for option in sorted((root.parent / group).glob("*.yaml")):
                    first = option.read_text().splitlines()[:1]
                    is_global = bool(first) and first[0].strip() == "# @package _global_"
                    checks.append((option, schema, "" if is_global else f"{group}.", False))
    return checks


def _commented_keys(path: Path) -> tuple:
    """(every dotted key in the file, the dotted keys that carry a comment on or above them)."""
    keys, commented, stack = [], set(), []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        keys.append(dotted)
        above = i - 1 >= 0 and lines[i - 1].strip().startswith("#") \
            and not lines[i - 1].strip().startswith("# @package")
        if re.search(r"\s#", rest) or above:
            commented.add(dotted)
    return keys, commented


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _schema_default(schema: DictConfig, dotted: str):
    """The schema's default at `dotted`, or _ABSENT for an entry of a free-form mapping."""
    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(schema, parent_key) if parent_key else schema
    assert isinstance(parent, DictConfig), f"{dotted}: no such config node in the schema"
    if leaf not in parent:
        assert OmegaConf.get_type(parent) is dict, f"{dotted}: not a key of the schema"
        return _ABSENT
    if OmegaConf.is_missing(parent, leaf):
        return _ABSENT  # a required value (???) has no default to disagree with
    value = OmegaConf.select(parent, leaf)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _problems(path: Path, schema_name: str, prefix: str, is_root: bool) -> list:
    schema = _schema(schema_name)
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    _, commented = _commented_keys(path)
    found = []
    for key, value in _leaves({k: v for k, v in data.items() if k not in _SKIPPED}):
        default = _schema_default(schema, prefix + key)
        if default is _ABSENT:
            continue
        parts = key.split(".")
        has_why = any(".".join(parts[:n]) in commented for n in range(1, len(parts) + 1))
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}: {key}"
        if default == value and is_root:
            found.append(f"{where} = {value!r} repeats the schema default (drop it)")
        elif default != value and not has_why:
            found.append(f"{where} = {value!r} differs from the schema's {default!r} "
                         "without a comment saying why")
    return found


CHECKS = _files_to_check()


def test_every_yaml_under_conf_is_checked():
    checked = {path for path, *_ in CHECKS}
    assert set(CONF.rglob("*.yaml")) == checked


@pytest.mark.parametrize("path,schema,prefix,is_root", CHECKS,
                         ids=[f"{p.relative_to(CONF)}:{s}" for p, s, *_ in CHECKS])
def test_yaml_overrides_the_schema_only_with_a_reason(path, schema, prefix, is_root):
    assert _problems(path, schema, prefix, is_root) == []


def test_the_checker_catches_an_unexplained_override_and_a_repeated_default(tmp_path):
    _register_all()
    root = tmp_path / "config.yaml"
    root.write_text("defaults:\n  - schema\n  - _self_\n"
                    "steps: 20\n"                     # the schema's default: a second copy
                    "prompts_per_step: 2\n"           # differs, no reason
                    "# why: a reason above the key\n"
                    "seed: 1\n"
                    "optim:\n  lr: 3.0e-4  # why: a reason on the line\n"
                    "reward:\n  weights:\n    tags: 1.0\n")  # a mapping entry: data
    found = _problems(root, "schema", "", True)
    assert len(found) == 2
    assert "steps = 20 repeats the schema default" in found[0]
    assert "prompts_per_step = 2 differs" in found[1]
    option = tmp_path / "opt.yaml"
    option.write_text("# header\ngroup_size: 4\nbeta: 0.5\n")  # a restated default is fine
    found = _problems(option, "schema", "algo.", False)
    assert found == ["opt.yaml: beta = 0.5 differs from the schema's 0.04 without a comment "
                     "saying why"]


def test_overlong_max_tokens_follows_rollout_max_new_tokens():
    # conf/config.yaml ties reward.overlong.max_tokens to the rollout's length limit: the one
    # interpolation between config groups, so the schema's 128 is only its standalone default.
    config.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = config.to_train_config(compose("config", overrides=["rollout.max_new_tokens=64"]))
    assert cfg.reward.overlong.max_tokens == 64


def test_the_moved_defaults_compose_to_the_values_runs_used():
    # optim.lr was 1e-5 in conf/config.yaml (schema: 1e-6) and reward.length.target_chars 300 in
    # conf/reward/simple.yaml (schema: 400); both now live in the schema, with the same effect.
    config.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = config.to_train_config(compose("config"))
    assert cfg.optim.lr == 1e-5 and cfg.reward.length.target_chars == 300
    assert (cfg.steps, cfg.prompts_per_step, cfg.micro_batch_size) == (20, 4, 8)
