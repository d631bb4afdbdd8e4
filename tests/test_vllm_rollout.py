"""The vLLM engine's pure parts, on fakes (vLLM cannot be installed on this CPU machine):
the weight-name mapping against a real tiny Llama's parameter names, and the conversion of
vLLM-shaped outputs (token ids, per-position {token: Logprob}) into a Rollout."""

from types import SimpleNamespace

import pytest
import torch

from lmmixup.errors import LmmixupError
from lmmixup.vllm_rollout.convert import hf_name, rollout_from_vllm, vllm_weight_items


def test_wrapper_prefixes_are_removed():
    assert hf_name("module.model.model.layers.0.self_attn.q_proj.weight") == \
        "model.layers.0.self_attn.q_proj.weight"  # DDP around the trainer's call wrapper
    assert hf_name("_orig_mod.model.norm.weight") == "model.norm.weight"  # torch.compile
    assert hf_name("module.model.lm_head.weight") == "lm_head.weight"
    assert hf_name("model.embed_tokens.weight") == "model.embed_tokens.weight"  # plain HF: as is


def test_weight_items_of_a_ddp_wrapped_tiny_llama_are_its_checkpoint_names():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmmixup.dist.strategy import _Call

    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, tie_word_embeddings=True))
    wrapped = torch.nn.ModuleDict({"module": _Call(lm)})  # names as DDP(_Call(lm)) has them
    got = dict(vllm_weight_items(wrapped.named_parameters(), tied_embeddings=True))
    expected = {n for n, _ in lm.named_parameters()} - {"lm_head.weight"}  # tied: vLLM ties
    assert set(got) == expected
    assert torch.equal(got["model.embed_tokens.weight"], lm.model.embed_tokens.weight)


def test_lora_wrapped_policy_is_refused():
    items = [("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
              torch.zeros(1))]
    with pytest.raises(LmmixupError, match="LoRA"):
        list(vllm_weight_items(items, tied_embeddings=False))


def _completion(ids, logps):
    # vLLM: logprobs[t] maps token id -> Logprob(logprob=...), the sampled token included
    return SimpleNamespace(token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=lp), 999:
                                                     SimpleNamespace(logprob=-9.0)}
                                                    for t, lp in zip(ids, logps)])


def test_outputs_become_a_rollout_in_group_order_with_processed_logprobs():
    eos, pad = 2, 0
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])  # (B=2, P=3) left-padded
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    outputs = [SimpleNamespace(outputs=[_completion([11, 12, eos], [-0.5, -1.0, -0.25]),
                                        _completion([13], [-2.0])]),
               SimpleNamespace(outputs=[_completion([14, eos], [-0.125, -0.75]),
                                        _completion([15, 16, 17], [-0.375, -1.5, -0.625])])]
    r = rollout_from_vllm(outputs, prompt_ids, prompt_mask, group_size=2, stop_ids=[eos],
                          pad_id=pad)
    assert r.completion_ids.tolist() == [[11, 12, eos], [13, pad, pad], [14, eos, pad],
                                         [15, 16, 17]]
    assert r.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert r.truncated.tolist() == [False, True, False, True]  # no EOS in rows 1 and 3
    # the sampled tokens' log-probs, never the other candidate's -9.0; 0 on padding
    # (binary fractions: exact in float32)
    assert r.rollout_logp.tolist() == [[-0.5, -1.0, -0.25], [-2.0, 0.0, 0.0], [-0.125, -0.75, 0.0],
                                       [-0.375, -1.5, -0.625]]
    assert torch.equal(r.prompt_ids, prompt_ids.repeat_interleave(2, 0))  # row n: prompt n // G


def test_missing_logprobs_or_a_wrong_group_size_is_an_error():
    prompt = torch.tensor([[5]]), torch.tensor([[1]])
    no_lp = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[3], logprobs=None)] * 2)]
    with pytest.raises(LmmixupError, match="logprobs=0"):
        rollout_from_vllm(no_lp, *prompt, group_size=2, stop_ids=[2], pad_id=0)
    with pytest.raises(LmmixupError, match="expected 2"):
        rollout_from_vllm([SimpleNamespace(outputs=[_completion([3], [-1.0])])], *prompt,
                          group_size=2, stop_ids=[2], pad_id=0)
