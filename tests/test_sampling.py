"""The sampling layer (lmmixup/sampling/policy.py): one Policy, the engine's numbers unchanged."""

import torch

from lmmixup.data.prompts import PromptRow, encode_prompts
from lmmixup.engine import static_generate
from lmmixup.models import stop_token_ids
from lmmixup.rollout import RolloutConfig
from lmmixup.sampling.policy import Policy, greedy_config

ROWS = [PromptRow(prompt="Name a colour.", reference="red", task="qa"),
        PromptRow(prompt="Count to three, slowly.", reference=None, task=None)]


def test_sample_is_the_engine_on_the_encoded_rows(tiny_model, tiny_tokenizer):
    cfg = RolloutConfig(max_new_tokens=6)
    policy = Policy.build(tiny_model, tiny_tokenizer, "cpu", cfg)
    assert policy.stop_ids == tuple(stop_token_ids(tiny_tokenizer, tiny_model))
    tiny_model.train()
    torch.manual_seed(3)
    ours = policy.sample(ROWS, 2, max_prompt_tokens=1024)
    assert tiny_model.training  # decoding switches to eval and back
    ids, mask = encode_prompts(tiny_tokenizer, ROWS, 1024)  # (B, P)
    torch.manual_seed(3)
    ref = static_generate(tiny_model.eval(), ids, mask, cfg, 2, list(policy.stop_ids),
                          tiny_tokenizer.pad_token_id)
    tiny_model.train()
    assert torch.equal(ours.completion_ids, ref.completion_ids)
    assert torch.equal(ours.rollout_logp, ref.rollout_logp)


def test_decode_gives_every_row_its_prompt_row(tiny_model, tiny_tokenizer):
    policy = Policy.build(tiny_model, tiny_tokenizer, "cpu", RolloutConfig(max_new_tokens=5))
    rollout, texts = policy.generate(ROWS, 3, max_prompt_tokens=1024)  # N = 2 * 3
    assert len(texts) == rollout.num_sequences == 6
    assert texts.references == ["red"] * 3 + [None] * 3  # row n belongs to prompt n // G
    assert texts.tasks == ["qa"] * 3 + [None] * 3
    assert texts.completion_tokens == rollout.completion_lengths.long().tolist()
    assert texts.truncated == rollout.truncated.tolist()


def test_greedy_is_the_argmax_on_the_jobs_engine_and_budget(tiny_model, tiny_tokenizer):
    cfg = RolloutConfig(max_new_tokens=7, temperature=0.7, top_p=0.9)
    policy = Policy.build(tiny_model, tiny_tokenizer, "cpu", cfg)
    assert greedy_config(cfg) == RolloutConfig(max_new_tokens=7, temperature=1.0, top_k=1, top_p=1.0)
    first = policy.greedy(ROWS, max_prompt_tokens=1024)
    again = policy.greedy(ROWS, max_prompt_tokens=1024)  # no randomness: the same tokens
    assert torch.equal(first.rollout.completion_ids, again.rollout.completion_ids)
    assert first.texts.completions == again.texts.completions


def test_using_swaps_only_the_weights(tiny_model, tiny_tokenizer):
    policy = Policy.build(tiny_model, tiny_tokenizer, "cpu", RolloutConfig())
    assert policy.using(tiny_model) is policy  # one process, DDP: the model itself
    other = torch.nn.Linear(1, 1)
    swapped = policy.using(other)
    assert swapped.model is other and swapped.stop_ids == policy.stop_ids
    assert swapped.config is policy.config and policy.model is tiny_model
