"""Every bad input listed in docs/BAD_INPUTS.md: one `error: ...` line, exit code 2, and nothing
that an earlier run wrote is touched.

Rows run in-process through `cli`, which is train.py's own path minus the process
(precheck_overrides -> compose -> report_errors(run)); three of them also run as real
subprocesses to prove the two paths print the same line. Paths in rows are placeholders:
    <data>    bad JSONL files          <models>  bad model folders
    <run>     an earlier, finished run (a real subprocess run with a W&B key in its environment)
    <ckpt>    tampered copies of that run's checkpoint
    <new>     a fresh run folder for the row
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hydra import compose, initialize_config_dir

import train
from conftest import ROOT
from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.config import register_configs
from lmmixup.rewards.registry import REWARDS, register_reward

DOC = ROOT / "docs" / "BAD_INPUTS.md"
# Speed only: one prompt, two samples of four tokens, no reference model, one step, and a
# 16-wide model (small files: every row hashes every file of the earlier run twice).
FAST = ["prompts_per_step=1", "algo.group_size=2", "algo.beta=0", "rollout.max_new_tokens=4",
        "steps=1", "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32"]
BASE = ["experiment=smoke", "logger.progress_bar=false", *FAST]
SECRET = "wandb-key-0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Row:
    id: str
    args: Tuple[str, ...]  # overrides after BASE (they win over it)
    error: str  # the line after "error: "
    run: str = "<new>"  # hydra.run.dir

    def command(self) -> str:
        """As docs/BAD_INPUTS.md shows it: BASE and a fresh run folder are implied."""
        folder = [] if self.run == "<new>" else [f"hydra.run.dir={self.run}"]
        return " ".join([*self.args, *folder])


def R(row_id: str, args: str, error: str, run: str = "<new>") -> Row:
    return Row(row_id, tuple(args.split()), error, run)


ROWS = [
    # Config: Hydra composition (precheck_overrides) and start-up validation (to_train_config).
    R("config-unknown-key", "algo.no_such_key=1",
      "algo.no_such_key: Key 'no_such_key' not in 'AlgoConfig'"),
    R("config-unknown-key-added-with-plus", "+algo.bta=0.1",
      "algo.bta: Key 'bta' not in 'AlgoConfig'"),
    R("config-unknown-root-key-added-with-plus", "++stepz=3",
      "stepz: Key 'stepz' not in 'TrainConfig'"),
    R("config-wrong-type-int", "steps=many",
      "steps: Value 'many' of type 'str' could not be converted to Integer"),
    R("config-wrong-type-float", "algo.beta=abc",
      "algo.beta: Value 'abc' of type 'str' could not be converted to Float"),
    R("config-unparsable-override", "steps=[1",
      "steps=[1: not a valid override (no viable alternative at input '[1')"),
    R("config-out-of-range-steps", "steps=0", "steps: must be > 0, got 0"),
    R("config-out-of-range-group", "algo.group_size=1",
      "algo.group_size: must be >= 2 (a group-relative advantage needs a group), got 1"),
    R("config-negative-reward-weight", "reward.weights.tags=-0.5",
      "reward.weights.tags: weights must be finite and >= 0, got -0.5"),
    R("config-mini-batch-not-dividing", "prompts_per_step=4 mini_batch_prompts=3",
      "mini_batch_prompts: must divide prompts_per_step=4"),
    R("config-resample-without-filter", "algo.max_resample_rounds=2",
      "algo.max_resample_rounds: needs algo.filter_zero_std_groups=true"),
    R("config-unknown-group-option", "model=nope",
      "model=nope: no such option in conf/model/; available: qwen2_5_1_5b, smollm2_135m, tiny"),
    R("config-new-reward-without-plus", "reward.weights.nope=1",
      "reward.weights.nope: not in the config; add a new key with a leading +: "
      "+reward.weights.nope=1"),
    R("config-unknown-reward", "+reward.weights.nope=1",
      "reward.weights.nope: unknown reward; known: <known rewards>"),
    R("config-bad-stage", "stage=rl", "stage: must be grpo, sft or eval, got 'rl'"),
    R("config-eval-without-file", "stage=eval",
      "data.eval_file: stage=eval needs a JSONL file of rows to score"),
    # Data: read and checked before the model is loaded, so nothing is written.
    R("data-missing-file", "data.train_file=<data>/missing.jsonl",
      "<data>/missing.jsonl: no such file"),
    R("data-empty-file", "data.train_file=<data>/empty.jsonl",
      "<data>/empty.jsonl: no rows (the file is empty or holds only blank lines)"),
    R("data-malformed-jsonl", "data.train_file=<data>/bad_json.jsonl",
      "<data>/bad_json.jsonl:2: invalid JSON: Expecting property name enclosed in double "
      "quotes (column 2)"),
    R("data-missing-field", "data.train_file=<data>/no_prompt.jsonl",
      "<data>/no_prompt.jsonl:2: missing field 'prompt'"),
    R("data-wrong-field-type", "data.train_file=<data>/prompt_int.jsonl",
      "<data>/prompt_int.jsonl:1: field 'prompt' must be a string or a message list, got int"),
    R("data-row-not-an-object", "data.train_file=<data>/not_object.jsonl",
      "<data>/not_object.jsonl:1: expected a JSON object, got list"),
    R("data-not-utf8", "data.train_file=<data>/latin1.jsonl",
      "<data>/latin1.jsonl:1: not valid UTF-8 (byte 0xe9 at column 16); re-save the file as UTF-8"),
    R("data-unknown-task", "data.train_file=<data>/bad_task.jsonl",
      "<data>/bad_task.jsonl:1: field 'task' is 'poem'; known: qa, mcq, tfq, cs, para"),
    R("data-prompt-too-long", "data.train_file=<data>/long.jsonl data.max_prompt_tokens=64",
      "<data>/long.jsonl:2: prompt has 331 tokens, over data.max_prompt_tokens=64"),
    R("data-missing-eval-file", "data.eval_file=<data>/missing_eval.jsonl",
      "<data>/missing_eval.jsonl: no such file"),
    # Models.
    R("model-missing-path", "model.name_or_path=<models>/missing",
      "model.name_or_path: no model folder at '<models>/missing'"),
    R("model-folder-without-model", "model.name_or_path=<data>",
      "model.name_or_path: cannot load a tokenizer from '<data>' (none of tokenizer.json, "
      "tokenizer_config.json, config.json there)"),
    R("model-corrupt-safetensors", "model.name_or_path=<models>/corrupt",
      "model.name_or_path: cannot load a causal LM from '<models>/corrupt' (SafetensorError: "
      "Error while deserializing header: header too large)"),
    R("model-no-chat-template", "model.name_or_path=<models>/no_template",
      "model.name_or_path: the tokenizer at '<models>/no_template' has no chat template"),
    # Checkpoints of the earlier run <run> (step 1, BASE settings).
    R("checkpoint-path-missing", "resume=<ckpt>/missing",
      "resume: '<ckpt>/missing' does not exist"),
    R("checkpoint-not-a-checkpoint", "resume=<data>",
      "resume: '<data>' is not a complete checkpoint folder (no meta.json)"),
    R("checkpoint-run-folder-given", "resume=<run>",
      "resume: '<run>' is not a complete checkpoint folder (no meta.json); it is a run folder: "
      "pass resume=auto hydra.run.dir=<run> or resume=<run>/checkpoints/step_000001"),
    R("checkpoint-foreign-meta", "resume=<ckpt>/foreign_meta",
      "<ckpt>/foreign_meta/meta.json: not checkpoint metadata (missing step, sampler, rng, "
      "model_identity, config_fingerprint)", run="<run>"),
    R("checkpoint-truncated-weights", "resume=<ckpt>/truncated_weights",
      "<ckpt>/truncated_weights/model.safetensors: cannot load weights, the file is truncated or "
      "corrupt (SafetensorError: Error while deserializing header: incomplete metadata, file "
      "not fully covered)", run="<run>"),
    R("checkpoint-truncated-trainer", "resume=<ckpt>/truncated_trainer",
      "<ckpt>/truncated_trainer/trainer.pt: cannot load trainer state, the file is truncated or "
      "corrupt (RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
      "central directory)", run="<run>"),
    R("checkpoint-different-model", "resume=auto model.tiny.hidden_size=48",
      "<run>/checkpoints/step_000001: checkpoint is from a different model architecture: "
      "model.tiny.hidden_size=48 (checkpoint: 16)", run="<run>"),
    R("checkpoint-different-config", "resume=auto algo.beta=0.1",
      "<run>/checkpoints/step_000001: checkpoint was written with a different config: "
      "algo.beta=0.1 (checkpoint: 0.0); resume with the same settings or start a new run",
      run="<run>"),
    R("checkpoint-new-run-in-used-folder", "",
      "<run>/metrics.jsonl: already holds metrics; pass resume=auto to continue that run, or "
      "pick a new hydra.run.dir", run="<run>"),
    R("config-dump-every", "logger.dump_every=-2",
      "logger.dump_every: must be -1 (auto), 0 (never) or a step interval > 0, got -2"),
    R("config-hacking-window", "hacking.window=0", "hacking.window: must be >= 1"),
    R("checkpoint-changed-steps", "resume=auto steps=2",
      "<run>/checkpoints/step_000001: checkpoint was written with a different config: "
      "steps=2 (checkpoint: 1); resume with the same settings or start a new run", run="<run>"),
    R("config-bf16-rollout-on-hf-engine", "rollout.engine=hf precision.rollout=bf16",
      "precision.rollout: only rollout.engine=static samples in another precision"),
    R("config-rollout-is-without-sampler-logprobs", "rollout.engine=hf algo.rollout_is=token_tis",
      "algo.rollout_is: needs an engine that records sampling log-probs (rollout.engine=static)"),
    R("config-dist-unknown-strategy", "dist.strategy=zero3",
      "dist.strategy: unknown 'zero3'; known: ddp, fsdp2"),
    R("config-group-sampling-on-hf-engine", "rollout.engine=hf dist.sampling_rng=group",
      "dist.sampling_rng: group needs rollout.engine=static (the hf engine draws from one "
      "global stream)"),
    R("config-unknown-precision", "precision.train=fp16",
      "precision.train: unknown 'fp16'; known: auto, fp32, bf16"),
    R("config-renamed-rollout-dtype", "rollout.dtype=bf16",
      "rollout.dtype: renamed to precision.rollout (auto, fp32 or bf16), e.g. "
      "precision.rollout=bf16"),
    R("config-unknown-reward-combine", "reward.combine=product",
      "reward.combine: unknown combination 'product'; known: sum, gate"),
    R("config-gate-reward-not-weighted", "reward.combine=gate",
      "reward.gate.reward: 'alignment' is not in reward.weights, so it is never computed"),
]
# A reward registered by this file (`nan_probe`) scores 0.5 at step 1, then NaN.
NONFINITE_ROWS = [
    R("nonfinite-reward-stop", "+reward.weights.nan_probe=1 steps=2 checkpoint.every=1 "
      "on_nonfinite=stop",
      "step 2: non-finite reward 'nan_probe'; stopping with the last checkpoint intact "
      "(on_nonfinite=stop)"),
    R("nonfinite-reward-skip-limit", "+reward.weights.nan_probe=1 steps=2 checkpoint.every=1 "
      "on_nonfinite=skip max_nonfinite_skips=0",
      "step 2: non-finite reward 'nan_probe'; stopping with the last checkpoint intact "
      "(non-finite batches so far: 1, max_nonfinite_skips=0)"),
]
SUBPROCESS_ROWS = ["config-unknown-group-option", "data-malformed-jsonl",
                   "checkpoint-different-config"]


def fill(text: str, places: Dict[str, Path]) -> str:
    for name, path in places.items():
        text = text.replace(f"<{name}>", str(path))
    return text.replace("<known rewards>", ", ".join(sorted(REWARDS)))


def tree_hashes(root: Path) -> Dict[str, str]:
    """relative path -> sha256 of every file under root (empty if root does not exist)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(argv: List[str], capsys) -> Tuple[int, str]:
    """train.py's command-line path in this process: (exit code, stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        precheck_overrides(argv, ROOT / "conf", "config", register_configs)
        run_dir = Path([a for a in argv if a.startswith("hydra.run.dir=")][-1].split("=", 1)[1])
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            dcfg = compose("config", overrides=[a for a in argv if not a.startswith("hydra.")])
        report_errors(lambda: train.run(dcfg, run_dir))
    except SystemExit as e:
        code = e.code
    finally:  # train.run's StopRequest takes over SIGINT/SIGTERM; give them back to pytest
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, capsys.readouterr().err


def argv_of(row: Row, places: Dict[str, Path]) -> List[str]:
    return [*BASE, *(fill(a, places) for a in row.args), f"hydra.run.dir={fill(row.run, places)}"]


def write_bad_data(data: Path) -> None:
    data.mkdir(parents=True)
    (data / "empty.jsonl").write_text("")
    (data / "bad_json.jsonl").write_text('{"prompt": "ok"}\n{prompt: "no quotes"}\n')
    (data / "no_prompt.jsonl").write_text('{"prompt": "ok"}\n{"question": "where is it?"}\n')
    (data / "prompt_int.jsonl").write_text('{"prompt": 42}\n')
    (data / "not_object.jsonl").write_text('["a", "list"]\n')
    (data / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))  # é = 0xe9
    (data / "bad_task.jsonl").write_text('{"prompt": "write", "task": "poem"}\n')
    # 300 words = 331 tokens once SmolLM2's chat template is applied.
    (data / "long.jsonl").write_text('{"prompt": "ok"}\n' + json.dumps({"prompt": "word " * 300})
                                     + "\n")


def write_bad_models(models: Path) -> None:
    from lmmixup.models import ModelConfig, build_tiny_model, load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path="tiny"))  # the cached SmolLM2 tokenizer
    corrupt = models / "corrupt"  # a valid tiny Llama config.json and tokenizer, garbage weights
    tokenizer.save_pretrained(corrupt)
    build_tiny_model(ModelConfig().tiny, tokenizer).config.save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"these bytes are not a safetensors file" * 4)
    no_template = models / "no_template"  # the same tokenizer without its chat template
    tokenizer.save_pretrained(no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))


def tamper_checkpoint(source: Path, ckpt: Path) -> None:
    for name, file in (("truncated_weights", "model.safetensors"),
                       ("truncated_trainer", "trainer.pt")):
        shutil.copytree(source, ckpt / name)
        data = (ckpt / name / file).read_bytes()
        (ckpt / name / file).write_bytes(data[: len(data) // 2])
    shutil.copytree(source, ckpt / "foreign_meta")
    (ckpt / "foreign_meta" / "meta.json").write_text("{}")


def train_subprocess(argv: List[str], env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    places = {name: root / name for name in ("data", "models", "run", "ckpt")}
    write_bad_data(places["data"])
    write_bad_models(places["models"])
    # The earlier run: real CLI, W&B offline, an API key in the environment.
    out = train_subprocess([*BASE, "logger=wandb", f"hydra.run.dir={places['run']}"],
                           env={"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    tamper_checkpoint(places["run"] / "checkpoints" / "step_000001", places["ckpt"])
    return places


@pytest.fixture(autouse=True)
def _no_full_errors(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input_gives_one_error_line_and_writes_nothing(row, world, tmp_path, capsys):
    places = {**world, "new": tmp_path / "new"}
    root = world["run"].parent
    before = tree_hashes(root)
    code, err = cli(argv_of(row, places), capsys)
    assert code == 2
    assert err.strip() == "error: " + fill(row.error, places)  # the whole stderr: one line
    assert tree_hashes(root) == before  # the earlier run, its checkpoints, the inputs
    assert tree_hashes(places["new"]) == {}  # a failed start writes nothing


@pytest.mark.parametrize("row_id", SUBPROCESS_ROWS)
def test_real_cli_prints_the_same_line(row_id, world, tmp_path):
    row = next(r for r in ROWS if r.id == row_id)
    places = {**world, "new": tmp_path / "new"}
    root = world["run"].parent
    before = tree_hashes(root)
    out = train_subprocess(argv_of(row, places))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: " + fill(row.error, places), out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert tree_hashes(root) == before  # Hydra's train.log included (and no .hydra/ is written)


class NanProbe:
    """The `nan_probe` reward: 0.5 for the first batch of a run, NaN afterwards. When it first
    turns NaN it hashes the run folder: what a failing step must leave exactly as it was."""

    def __init__(self) -> None:
        self.run_dir: Path = Path()
        self.snapshot: Dict[str, str] = {}

    def build(self, cfg):
        calls = []

        def score(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                return [0.5] * len(batch)
            self.snapshot = self.snapshot or tree_hashes(self.run_dir)
            return [float("nan")] * len(batch)

        return score


@pytest.fixture()
def nan_probe():
    probe = NanProbe()
    register_reward("nan_probe")(probe.build)
    yield probe
    del REWARDS["nan_probe"]


@pytest.mark.parametrize("row", NONFINITE_ROWS, ids=lambda r: r.id)
def test_nan_reward_stops_with_one_line_and_the_last_checkpoint_intact(row, nan_probe, tmp_path,
                                                                       capsys):
    places = {"new": tmp_path / "new"}
    nan_probe.run_dir = places["new"]
    code, err = cli(argv_of(row, places), capsys)
    assert code == 2
    assert err.strip() == "error: " + row.error
    assert "checkpoints/step_000001/model.safetensors" in nan_probe.snapshot
    assert tree_hashes(places["new"]) == nan_probe.snapshot  # step 1's checkpoint and metrics
    metrics = (places["new"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1]


def test_doc_table_lists_every_row_with_its_exact_error():
    table = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5 and cells[1] not in ("id", "---"):
            table[cells[1]] = (cells[3], cells[4])
    rows = ROWS + NONFINITE_ROWS
    assert len(rows) >= 25
    assert sorted(table) == sorted(r.id for r in rows)
    for row in rows:
        assert table[row.id] == (row.command(), "error: " + row.error), row.id


# Secrets: never in the run folder, never in what goes to W&B.

def test_wandb_api_key_never_lands_in_the_run_folder(world):
    files = [p for p in world["run"].rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)  # W&B did write its offline run here
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked


def test_secret_config_keys_are_redacted_for_wandb(tmp_path, monkeypatch):
    from lmmixup.logging import LoggerConfig, MetricsLog

    sent = {}

    class FakeWandb:  # stands in for the wandb module: records what wandb.init receives
        @staticmethod
        def init(**kwargs):
            sent.update(kwargs)
            return FakeWandb()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    config = {"model": {"hf_token": "hf_abc", "name_or_path": "tiny"},
              "reward": {"judge": {"api_key": "sk-abc", "OPENAI_API_KEY": "sk-def"}},
              "rollout": {"max_new_tokens": 16}, "data": {"max_prompt_tokens": 64}}
    MetricsLog(LoggerConfig(backend="wandb"), tmp_path, config)
    assert sent["config"] == {
        "model": {"hf_token": "<redacted>", "name_or_path": "tiny"},
        "reward": {"judge": {"api_key": "<redacted>", "OPENAI_API_KEY": "<redacted>"}},
        "rollout": {"max_new_tokens": 16}, "data": {"max_prompt_tokens": 64},  # counts stay
    }


def test_no_key_of_the_real_config_is_hidden_from_wandb():
    from omegaconf import OmegaConf

    from lmmixup.logging import redact

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        config = OmegaConf.to_container(compose("config"), resolve=True)
    assert redact(config) == config  # e.g. rollout.max_new_tokens is a count, not a token
