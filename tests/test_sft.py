"""SFT building blocks: label masking token by token, parity with HF's loss, split-independent
gradient accumulation, and a tiny-model run that learns."""

import pytest
import torch

from lmmixup.data.layout import prompt_messages, target_text
from lmmixup.data.prompts import PromptRow
from lmmixup.errors import LmmixupError
from lmmixup.models import ModelConfig, load_model
from lmmixup.optim import OptimConfig, build_optimizer, build_scheduler
from lmmixup.sft import (IGNORE_INDEX, collate, encode_example, encode_rows, sft_backward,
                         sft_loss)

TINY = ModelConfig(name_or_path="tiny")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's matrices are too small to split across threads; on our shared 2-core
    # box one forward took 0.56 s with 2 threads and 0.015 s with 1 (measured 2026-11-24).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tok(tiny_tokenizer):  # conftest's session-wide tiny (SmolLM2) tokenizer
    return tiny_tokenizer


def make_row(i: int):
    members = [(f"wht is {i} plus {i}", f"{2 * i} maybe"), (f"What is {i} plus {i}?", "no idea")]
    pair = f"Q: What is {i} plus {i}?\nA: {2 * i}"
    return {"prompt": prompt_messages(members, "qa"), "target": target_text("Pair 1 has typos.", pair)}


def test_prompt_tokens_are_masked_token_by_token(tok):
    row = make_row(3)
    ex = encode_example(tok, row["prompt"], row["target"])
    prompt_ids = tok(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    target_ids = tok(row["target"], add_special_tokens=False)["input_ids"]
    p = len(prompt_ids)
    assert len(ex.input_ids) == len(ex.labels) == p + len(target_ids) + 1  # + EOS
    for i, (token, label) in enumerate(zip(ex.input_ids, ex.labels)):
        if i < p:
            assert token == prompt_ids[i] and label == IGNORE_INDEX, i
        else:
            assert label == token, i  # every target token, EOS included, is learned
    assert ex.input_ids[-1] == ex.labels[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[:p]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ex.input_ids[p:]) == row["target"] + tok.eos_token
    assert ex.num_target_tokens == len(target_ids) + 1


def test_collate_right_pads_with_ignored_labels(tok):
    a = encode_example(tok, make_row(1)["prompt"], make_row(1)["target"])
    b = encode_example(tok, make_row(123456)["prompt"], make_row(123456)["target"])
    short, long_ = sorted([a, b], key=lambda e: len(e.input_ids))
    batch = collate([short, long_], pad_id=tok.pad_token_id)
    n = len(short.input_ids)
    assert batch.input_ids.shape == (2, len(long_.input_ids))
    assert batch.input_ids[0, :n].tolist() == short.input_ids
    assert (batch.input_ids[0, n:] == tok.pad_token_id).all()
    assert batch.attention_mask[0].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
    assert (batch.labels[0, n:] == IGNORE_INDEX).all()
    assert batch.num_target_tokens == short.num_target_tokens + long_.num_target_tokens


def test_loss_matches_hf_mean_token_loss(tok):
    model = load_model(TINY, tok)
    examples = [encode_example(tok, make_row(i)["prompt"], make_row(i)["target"]) for i in (1, 22, 333)]
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        ours, n = sft_loss(model, batch, chunk_size=7)  # odd chunks: chunking must not matter
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   labels=batch.labels).loss  # HF: mean CE over labels != -100, after the shift
    # the first label of each row is a prompt token (ignored), so the shift loses no target
    assert n == batch.num_target_tokens
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_does_not_depend_on_the_split(tok):
    model = load_model(TINY, tok)
    # lengths differ, so per-micro-batch means would weight tokens unequally
    examples = [encode_example(tok, make_row(i)["prompt"], make_row(i)["target"])
                for i in (1, 4444, 55, 987654321)]

    def grads(micro):
        model.zero_grad()
        loss, n = sft_backward(model, examples, micro, tok.pad_token_id)
        return loss, n, [p.grad.clone() for p in model.parameters()]

    full_loss, n_full, g_full = grads(4)
    for micro in (1, 3):
        loss, n, g = grads(micro)
        assert n == n_full
        assert loss == pytest.approx(full_loss, rel=1e-5)
        for a, b in zip(g, g_full):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_encode_rows_accepts_prompt_rows_and_reports_bad_ones(tok):
    r = make_row(2)
    rows = [PromptRow(prompt=r["prompt"], target=r["target"], line=7), r]
    examples, skipped = encode_rows(tok, rows, max_seq_len=4096)
    assert skipped == 0 and examples[0] == examples[1]
    examples, skipped = encode_rows(tok, rows, max_seq_len=len(examples[0].input_ids) - 1)
    assert examples == [] and skipped == 2
    with pytest.raises(LmmixupError, match=r"^sft.jsonl:7: SFT needs a non-empty 'target'"):
        encode_rows(tok, [PromptRow(prompt="hi", line=7)], 4096, source="sft.jsonl")


def test_tiny_model_sft_lowers_the_loss(tok):
    torch.manual_seed(0)
    model = load_model(TINY, tok)
    examples = [encode_example(tok, make_row(i)["prompt"], make_row(i)["target"]) for i in range(4)]
    cfg = OptimConfig(lr=3e-3, warmup_frac=0.1, schedule="constant", weight_decay=0.0)
    steps = 30
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_updates=steps)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = sft_backward(model, examples, micro_batch_size=2, pad_id=tok.pad_token_id)
        opt.step()
        sched.step()
        losses.append(loss)
    # random init starts near ln(49152) = 10.8 nats/token; 30 updates on the same 4 targets
    # (3 of them warm-up) bring it to about 2.4 (measured), far below half the start
    assert losses[0] > 9.0
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses[3::5], losses[8::5]))  # falling all along
