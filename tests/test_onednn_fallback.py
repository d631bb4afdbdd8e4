"""The fallback from torch's private oneDNN ops to the public path (lmmixup/onednn.py).

The ops are hidden or replaced in `torch.ops.mkldnn` the way a torch release could: removed,
with a changed signature, or computing something else. Each time the check must say why, warn
once, and every GEMM must then run F.linear: the products are compared with F.linear's (equal
bits, since it is the same call), the engine's greedy tokens with HF `generate`'s, and nothing
may call the broken op (the stand-ins raise or are absent, so a missed call site fails the test).
The kernel choice is forced to oneDNN, so without the guard these paths would call the op.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import lmmixup.engine as engine
import lmmixup.kernel_choice as kc
from lmmixup import kernels, onednn
from lmmixup.engine import static_generate
from lmmixup.rollout import RolloutConfig

PAD = 0
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="this torch build has no oneDNN")


class _Mkldnn:
    """torch.ops.mkldnn with `missing` ops absent and `replaced` ones swapped for stand-ins."""

    def __init__(self, real, missing=(), replaced=None):
        self._real, self._missing, self._replaced = real, set(missing), dict(replaced or {})

    def __getattr__(self, name):
        if name in self._missing:  # what torch's op namespace raises for an unknown op
            raise AttributeError(f"'_OpNamespace' 'mkldnn' object has no attribute '{name}'")
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._real, name)


def _onednn_choice():
    return kc.KernelChoice(kc.cpu_model(), torch.__version__, "onednn", "onednn", {}, {}, [],
                           "fp32", "fp32", {})


@pytest.fixture()
def fresh(monkeypatch, tmp_path):
    """A fresh check and kernel choice, oneDNN chosen for both GEMM uses; restored after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    torch.ops.mkldnn  # noqa: B018 - resolves the namespace, so monkeypatch can put it back
    choice = kc.current_choice  # the cached function: a test may patch the name
    onednn.unusable.cache_clear()
    choice.cache_clear()
    yield
    onednn.unusable.cache_clear()
    choice.cache_clear()


def _force_onednn_choice(monkeypatch):
    # read by kernels.use_onednn (through the module) and by the engine (imported by name)
    monkeypatch.setattr(kc, "current_choice", _onednn_choice)
    monkeypatch.setattr(engine, "current_choice", _onednn_choice)


def _llama(seed=0):
    """Random 2-layer Llama (GQA) with peaked logits, so greedy decoding varies its tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         initializer_range=0.3, pad_token_id=PAD, bos_token_id=None,
                         eos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _greedy_both_ways(model):
    """(our engine's greedy completion, HF generate's) for 3 left-padded random prompts."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 256, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = PAD, 0  # one shorter prompt, left-padded
    ours = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=12), 1, [], PAD,
                           greedy=True)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                         eos_token_id=None, pad_token_id=PAD)[:, ids.shape[1]:]
    return ours, ref


def _signature_changed(*args, **kwargs):
    # what a torch release with another argument list gives our call
    raise RuntimeError("mkldnn::_linear_pointwise() Expected a value of type 'str' for argument "
                       "'attr' but instead found type 'list'.")


def _no_bias(x, w, b, attr, scalars, algorithm):
    return x @ w.t()  # runs, but is no longer x W^T + b: the check must notice


@needs_onednn
@pytest.mark.parametrize("broken", ["missing", "signature", "product"])
def test_a_broken_private_op_falls_back_to_f_linear_with_one_warning(fresh, monkeypatch, broken):
    real = torch.ops.mkldnn
    stand_in = {"missing": _Mkldnn(real, missing={"_linear_pointwise"}),
                "signature": _Mkldnn(real, replaced={"_linear_pointwise": _signature_changed}),
                "product": _Mkldnn(real, replaced={"_linear_pointwise": _no_bias})}[broken]
    monkeypatch.setattr(torch.ops, "mkldnn", stand_in)
    with pytest.warns(RuntimeWarning, match="falls back to F.linear") as caught:
        reason = onednn.unusable()
    assert "_linear_pointwise" in reason or "RuntimeError" in reason, reason
    assert "_linear_pointwise" in str(caught[0].message) or "RuntimeError" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second ask warns no more: the check ran once
        assert onednn.unusable() == reason and not onednn.usable()

    # with no measured choice, the kernel choice is MKL/fp32 and says why, for train.py's line
    choice = kc.current_choice()
    assert (choice.decode_gemm, choice.training_gemm, choice.train_precision) == ("mkl", "mkl", "fp32")
    assert reason in kc.describe_precision(choice)
    assert not list((kc._cache_file().parent).glob("*.json"))  # a fallback is not cached

    # even where a cached choice says oneDNN, the training and decode paths use F.linear
    if broken == "product":  # the stand-in runs without raising: make any call of it fail
        stand_in._replaced["_linear_pointwise"] = _signature_changed
    _force_onednn_choice(monkeypatch)
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16, generator=g, requires_grad=True)
    y = kernels.linear(x, lin)  # (5, 8)
    assert not kernels.use_onednn(x, lin.weight)
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias))  # the same call: the same bits
    y.sum().backward()  # d sum(x W^T + b) / dx = ones (5, 8) @ W = W's column sums on each row
    assert torch.allclose(x.grad, lin.weight.sum(0).expand(5, 16))

    ours, ref = _greedy_both_ways(_llama())
    assert len(set(ref.flatten().tolist())) > 5  # not one repeated token
    assert torch.equal(ours.completion_ids, ref)


@needs_onednn
def test_working_ops_pass_the_check_and_the_forced_choice_uses_them(fresh, monkeypatch):
    """The guard must not cost the fast path: on this torch the check passes, and with oneDNN
    chosen the engine really calls the private op (counted), with HF's greedy tokens."""
    assert onednn.unusable() is None, onednn.unusable()
    real = torch.ops.mkldnn
    calls = []

    def counted(*args):
        calls.append(1)
        return real._linear_pointwise(*args)

    counted.binary = real._linear_pointwise.binary  # the fused * and + (not counted)
    monkeypatch.setattr(torch.ops, "mkldnn", _Mkldnn(real, replaced={"_linear_pointwise": counted}))
    _force_onednn_choice(monkeypatch)
    ours, ref = _greedy_both_ways(_llama())
    assert torch.equal(ours.completion_ids, ref)
    assert calls  # the oneDNN path ran: the fallback tests above compare against a live path
