r"""ref_nll_alpaca's per-example score: the reference answer's negative log-likelihood per byte.

lm-eval sends one `loglikelihood` request per doc, (context, continuation) with
    context      = the instruction as one user turn in the model's chat template, assistant
                   turn opened (`apply_chat_template`, add_generation_prompt=True), which is
                   how train.py's SFT renders a prompt (lmmixup/sft.py: encode_example);
    continuation = the reference answer, verbatim (no delimiter: `loglikelihood` tasks send
                   doc_to_target as it is).
HFLM scores it as follows. It moves the context's trailing whitespace into the continuation,
and so with a ChatML template the "\n" after "<|im_start|>assistant" is scored with the
answer. SmolLM2-135M-Instruct gives it at most 2.45e-4 nats on the first 20 instructions
(docs/LOG.md, 2026-12-06), about 1e-7 nats per byte of a typical answer. Then HFLM
encodes context + continuation as one string and scores every token after the tokens of the
context, in one forward pass. The end-of-turn token is not scored: this measures the answer,
not where it stops.

The score is that log-likelihood, negated, divided by the UTF-8 byte length of the reference
(not by its tokens): nats per byte is the same unit under every tokenizer, so models with other
vocabularies compare. Lower is better. Multiply by 1/ln 2 = 1.4427 for bits per byte.
"""

from __future__ import annotations

from typing import Dict, List, Tuple


def nll_per_byte(loglikelihood: float, reference: str) -> float:
    """-log p(reference | prompt) / bytes(reference), in nats per byte."""
    return -float(loglikelihood) / len(reference.encode("utf-8"))


def process_results(doc: dict, results: List[Tuple[float, bool]]) -> Dict[str, float]:
    """lm-eval hook: results = [(loglikelihood, is_greedy)] for the doc's one request."""
    (loglikelihood, _is_greedy), = results
    return {"nll_per_byte": nll_per_byte(loglikelihood, doc["reference"])}
