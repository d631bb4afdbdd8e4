"""LLM-judge quality backend (`reward.quality.backend=judge`) and the data pipeline's rater.

Any chat causal LM (default: the embedded SmolLM2-135M-Instruct) reads a rubric through its
chat template and is prefilled with "Score: ". We do not sample a digit and parse it: the score
is the expectation under the next-token distribution restricted to the tokens "0".."5",

    p(s) = softmax_s(logits[id("s")]),   s = 0..5        E = sum_s s * p(s)      (in [0, 5])

which is smooth in the model's belief and never fails to parse (as in G-Eval, Liu et al. 2023,
"probability-weighted summation of the output scores").

The rubric is a system prompt plus six worked examples as earlier chat turns (our own texts).
A 135M model gives a near-uniform, content-blind score zero-shot; with the examples it ranks
fluent, correct text above gibberish (measured in docs/LOG.md), which is what a reward needs.
The rubric + examples prefix is the same for every text, so its KV cache is computed once and
reused: each text costs only its own ~tokens plus a dozen template tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from lmmixup.errors import LmmixupError, require
from lmmixup.models import ModelConfig, load_model, load_tokenizer

SCORE_TOKENS = ("0", "1", "2", "3", "4", "5")
PREFILL = "Score: "
SYSTEM_PROMPT = (
    "You are a strict grader. Rate each response from 0 to 5: 0 = gibberish, 1 = broken, "
    "2 = poor, 3 = acceptable, 4 = good, 5 = excellent (fluent, correct, helpful). "
    "Reply with the score only.")
# (response, score) worked examples shown before the text to grade
FEW_SHOT: Tuple[Tuple[str, int], ...] = (
    ("The Moon orbits the Earth roughly once every 27 days.", 5),
    ("sdf kjh qwe zzxp lorem", 0),
    ("Exercise strengthens the heart and improves sleep, so most adults should be active most "
     "days.", 5),
    ("dog the ran quickly park in", 1),
    ("ppp rrr ttt vvv", 0),
    ("Iron rusts when it reacts with oxygen and water, forming iron oxide.", 5),
)
USER_TEMPLATE = "Response: {text}"


@dataclass
class JudgeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """the judge LM (any chat causal LM; default the embedded SmolLM2-135M-Instruct)"""
    batch_size: int = 16
    """texts per judge forward"""
    max_text_tokens: int = 384
    """a text longer than this many tokens is cut before it is judged"""
    device: str = "cpu"
    """device of the judge model"""

    def validate(self) -> None:
        require(self.batch_size > 0, "reward.quality.judge.batch_size", "must be > 0")
        require(self.max_text_tokens > 0, "reward.quality.judge.max_text_tokens", "must be > 0")
        self.model.validate()


def _messages(text: str) -> List[Dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example, score in FEW_SHOT:
        msgs += [{"role": "user", "content": USER_TEMPLATE.format(text=example)},
                 {"role": "assistant", "content": f"{PREFILL}{score}"}]
    return msgs + [{"role": "user", "content": USER_TEMPLATE.format(text=text)}]


class LLMJudge:
    """`judge_scores(texts) -> E per text in [0, 5]`, batched, prefix KV cached."""

    _SENTINEL = "\x00JUDGE_TEXT\x00"

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.tok = load_tokenizer(cfg.model)
        self.model = load_model(cfg.model, self.tok).to(cfg.device).eval().requires_grad_(False)
        self.device = torch.device(cfg.device)
        ids = []
        for s in SCORE_TOKENS:
            enc = self.tok.encode(s, add_special_tokens=False)
            if len(enc) != 1:
                raise LmmixupError(f"reward.quality.judge.model: the tokenizer splits score "
                                   f"{s!r} into {len(enc)} tokens; the judge needs one per digit")
            ids.append(enc[0])
        self.score_ids = torch.tensor(ids, device=self.device)  # (S,)
        # Split the rendered prompt where the text goes: the prefix (system prompt, examples,
        # start of the last user turn) is shared; the suffix template holds the text.
        full = self.tok.apply_chat_template(_messages(self._SENTINEL), tokenize=False,
                                            add_generation_prompt=True) + PREFILL
        cut = full.index(USER_TEMPLATE.format(text=self._SENTINEL))
        self.prefix_text, self.suffix_template = full[:cut], full[cut:]
        self.prefix_ids = self.tok(self.prefix_text, add_special_tokens=False,
                                   return_tensors="pt").input_ids.to(self.device)  # (1, P)
        with torch.inference_mode():
            out = self.model(self.prefix_ids, use_cache=True)
        self.prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _clip(self, text: str) -> str:
        ids = self.tok.encode(text.strip(), add_special_tokens=False)
        if len(ids) > self.cfg.max_text_tokens:
            return self.tok.decode(ids[: self.cfg.max_text_tokens])
        return text.strip()

    def _suffix_ids(self, text: str) -> List[int]:
        filled = self.suffix_template.replace(self._SENTINEL, self._clip(text))
        return self.tok.encode(filled, add_special_tokens=False)

    def _score_batch(self, suffixes: List[List[int]]) -> torch.Tensor:
        """Token ids of b suffixes -> E (b,). Suffixes are RIGHT-padded after the cached prefix:
        under the causal mask a real token never sees the pads that follow it, so the logits
        at each row's last real token are exact and no attention mask is needed."""
        from transformers import DynamicCache  # start-up: transformers loads only with a judge

        b, P = len(suffixes), self.prefix_ids.shape[1]
        lengths = torch.tensor([len(s) for s in suffixes], device=self.device)  # (b,)
        ids = torch.full((b, int(lengths.max())), self.tok.pad_token_id, device=self.device)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s, device=self.device)  # (b, Ts)
        cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1).contiguous(),
                                              v.expand(b, -1, -1, -1).contiguous())
                                             for k, v in self.prefix_kv])
        positions = P + torch.arange(ids.shape[1], device=self.device)[None, :].expand(b, -1)
        with torch.inference_mode():
            hidden = self.model.base_model(ids, past_key_values=cache, position_ids=positions,
                                           use_cache=True).last_hidden_state  # (b, Ts, H)
            last = hidden[torch.arange(b, device=self.device), lengths - 1]  # (b, H)
            # the LM head on each row's last real token only, not on all b*Ts positions
            logits = self.model.get_output_embeddings()(last)  # (b, V)
        return self._expected(logits)

    def _expected(self, last_logits: torch.Tensor) -> torch.Tensor:
        """(b, V) next-token logits -> E (b,) over the score tokens."""
        p = last_logits[:, self.score_ids].float().softmax(dim=-1)  # (b, S)
        values = torch.arange(len(SCORE_TOKENS), dtype=p.dtype, device=p.device)  # (S,)
        return (p @ values).cpu()  # (b,)

    def judge_scores_uncached(self, texts: Sequence[str]) -> List[float]:
        """Reference implementation: full prompts, left-padded, no prefix cache (tests)."""
        prompts = [self.prefix_text + self.suffix_template.replace(self._SENTINEL, self._clip(t))
                   for t in texts]
        enc = self.tok(prompts, return_tensors="pt", padding=True,
                       add_special_tokens=False).to(self.device)  # left-padded (load_tokenizer)
        positions = (enc.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (b, T)
        with torch.inference_mode():
            logits = self.model(**enc, position_ids=positions).logits[:, -1]  # (b, V)
        return self._expected(logits).tolist()

    def judge_scores(self, texts: Sequence[str]) -> List[float]:
        """Expected score E in [0, 5] for each text, in order."""
        suffixes = [self._suffix_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))  # less padding
        out = [0.0] * len(texts)
        bs = self.cfg.batch_size
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            for i, e in zip(chunk, self._score_batch([suffixes[i] for i in chunk]).tolist()):
                out[i] = e
        return out


_JUDGES: Dict[Tuple[str, str], LLMJudge] = {}


def load_judge(cfg: JudgeConfig) -> LLMJudge:
    """The process-wide judge for (model, device), loaded on first use."""
    key = (cfg.model.name_or_path, cfg.device)
    if key not in _JUDGES:
        _JUDGES[key] = LLMJudge(cfg)
    return _JUDGES[key]


def judge_scores(texts: Sequence[str], cfg: JudgeConfig | None = None) -> List[float]:
    """The rater: expected 0..5 score of each text under the LLM judge (default config:
    the embedded SmolLM2). The data pipeline rates its samples with this."""
    return load_judge(cfg or JudgeConfig()).judge_scores(texts)
