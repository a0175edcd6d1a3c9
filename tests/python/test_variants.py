"""The attention variants of issue 7 from Python: sliding window, ALiBi, softcap, sinks, packed
variable-length batches and dropout, through sdpa.attention, attention_backward, explain,
scaled_dot_product_attention and sdpa.torch.attention.

The oracle is sdpa_reference.variant_attention / variant_backward: numpy float64 written from the
definitions (include/sdpa/options.h, src/core/dropout.h), with its own Philox4x32-10 checked
against Random123's known answers, so dropout is compared element by element too. Finite
differences of sdpa.attention check the gradients of softcap, ALiBi and sinks independently of
any hand-written backward. With PyTorch installed, the variants are rebuilt as an explicit float
mask (plus an extra key for the sink) for torch.nn.functional.scaled_dot_product_attention, and
sdpa.torch.attention's gradients (sinks included) are compared with torch.autograd."""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import pytest

import sdpa
from sdpa_reference import (assert_close, dropout_kept, philox4x32_10, variant_attention,
                            variant_backward)

try:
    import torch
    import torch.nn.functional as F

    import sdpa.torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
BACKENDS = ["reference", "cpu"]
DTYPES = [np.float32, np.float64]


def alibi_slopes(heads):
    """The ALiBi paper's slopes for a power-of-two head count: 2^(-8 (h + 1) / heads)."""
    return 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)


# ---------------------------------------------------------------------------------------------
# Philox4x32-10 (the numpy one in sdpa_reference.py, which the dropout checks below rely on)

@pytest.mark.parametrize("counter, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                   0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
], ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    """Random123's known-answer tests for philox4x32_R(10, ...) (kat_vectors)."""
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_philox_on_arrays():
    """Counters given as arrays give, element by element, what scalar counters give."""
    j = np.arange(8)
    words = philox4x32_10((j, 3, 2, 1), (5, 6))
    for n in range(8):
        assert tuple(int(w[n]) for w in words) == tuple(
            int(w) for w in philox4x32_10((n, 3, 2, 1), (5, 6)))


# ---------------------------------------------------------------------------------------------
# Forward and backward against the numpy reference, each variant alone and combined


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    query: Tuple[int, ...]
    key: Tuple[int, ...]
    value: Tuple[int, ...]
    causal: Optional[str] = None
    mask: Optional[Tuple[int, ...]] = None  # shape, broadcast to the scores
    mask_kind: Optional[str] = None         # "bool" or "additive" (-inf at about 20%)
    window: Optional[Tuple[Optional[int], Optional[int]]] = None
    alibi: bool = False                     # the paper's slopes for the query heads
    softcap: Optional[float] = None
    sinks: Optional[str] = None             # "normal", or "with -inf" (head 0 has no sink)
    cu_seqlens: Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]] = None
    dropout_p: float = 0.0
    scale: Optional[float] = None


def heads_of(case):
    return case.query[-3] if len(case.query) >= 3 else 1


# cu_seqlens with an empty query sequence (1), a sequence whose queries see no key (3: 0 keys),
# and Lq != Lk within sequences.
VARLEN = ((0, 3, 3, 8, 10), (0, 4, 6, 11, 11))

CASES = [
    # window
    Case("window both sides", (2, 3, 7, 8), (2, 3, 9, 8), (2, 3, 9, 5), window=(2, 1)),
    Case("window (0, 0)", (2, 6, 8), (2, 6, 8), (2, 6, 8), window=(0, 0)),
    Case("window left + top_left", (2, 2, 9, 8), (2, 2, 9, 8), (2, 2, 9, 8), causal="top_left",
         window=(3, None)),
    Case("window right only + bottom_right", (2, 5, 8), (2, 9, 8), (2, 9, 8),
         causal="bottom_right", window=(None, 0)),
    Case("window Lq > Lk (empty rows)", (2, 2, 9, 8), (2, 2, 4, 8), (2, 2, 4, 8), window=(1, 1)),
    Case("window top_left Lq < Lk", (1, 2, 4, 8), (1, 2, 9, 8), (1, 2, 9, 8), causal="top_left",
         window=(1, 2)),
    Case("window huge", (2, 5, 8), (2, 7, 8), (2, 7, 8), window=(2**62, 2**70)),
    Case("window + bool mask + gqa", (2, 4, 6, 8), (2, 2, 8, 8), (2, 2, 8, 8), window=(2, 2),
         mask=(4, 1, 8), mask_kind="bool"),
    # ALiBi
    Case("alibi", (2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 3), alibi=True),
    Case("alibi + top_left", (2, 4, 7, 8), (2, 4, 5, 8), (2, 4, 5, 8), causal="top_left",
         alibi=True),
    Case("alibi + bottom_right + gqa", (1, 8, 5, 8), (1, 2, 9, 8), (1, 2, 9, 8),
         causal="bottom_right", alibi=True),
    Case("alibi + additive mask", (2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), alibi=True,
         mask=(2, 5, 7), mask_kind="additive"),
    Case("alibi 2d", (5, 8), (7, 8), (7, 4), alibi=True),
    # softcap
    Case("softcap", (2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), softcap=1.5, scale=1.0),
    Case("softcap large", (2, 5, 8), (2, 7, 8), (2, 7, 8), softcap=50.0),
    Case("softcap + bottom_right + bool mask", (2, 3, 6, 8), (2, 3, 9, 8), (2, 3, 9, 8),
         causal="bottom_right", mask=(6, 9), mask_kind="bool", softcap=2.0, scale=0.8),
    Case("softcap + gqa + additive mask", (1, 4, 5, 8), (1, 1, 7, 8), (1, 1, 7, 6), softcap=3.0,
         mask=(5, 7), mask_kind="additive"),
    # sinks
    Case("sinks", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), sinks="normal"),
    Case("sinks with -inf", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), sinks="with -inf"),
    Case("sinks + empty rows", (2, 2, 9, 8), (2, 2, 4, 8), (2, 2, 4, 8), causal="bottom_right",
         sinks="with -inf"),
    Case("sinks + gqa + bool mask", (2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), sinks="normal",
         mask=(2, 1, 5, 7), mask_kind="bool"),
    Case("sinks 2d", (5, 8), (7, 8), (7, 3), sinks="normal"),
    # packed variable-length sequences
    Case("varlen", (2, 10, 8), (2, 11, 8), (2, 11, 4), cu_seqlens=VARLEN),
    Case("varlen rank 4", (1, 2, 10, 8), (1, 2, 11, 8), (1, 2, 11, 8), cu_seqlens=VARLEN),
    Case("varlen top_left", (2, 10, 8), (2, 11, 8), (2, 11, 8), causal="top_left",
         cu_seqlens=VARLEN),
    Case("varlen bottom_right + gqa", (1, 4, 10, 8), (1, 2, 11, 8), (1, 2, 11, 8),
         causal="bottom_right", cu_seqlens=VARLEN),
    Case("varlen + window + alibi", (2, 10, 8), (2, 11, 8), (2, 11, 8), window=(1, 0),
         alibi=True, cu_seqlens=VARLEN),
    Case("varlen + sinks + packed mask", (2, 10, 8), (2, 11, 8), (2, 11, 8), sinks="normal",
         mask=(10, 11), mask_kind="additive", cu_seqlens=VARLEN),
    Case("varlen one sequence", (2, 6, 8), (2, 6, 8), (2, 6, 8), causal="top_left",
         cu_seqlens=((0, 6), (0, 6))),
    # dropout
    Case("dropout", (2, 3, 6, 8), (2, 3, 9, 8), (2, 3, 9, 8), dropout_p=0.3),
    Case("dropout + causal + sinks + gqa", (2, 4, 6, 8), (2, 2, 6, 8), (2, 2, 6, 8),
         causal="top_left", sinks="normal", dropout_p=0.5),
    Case("dropout + varlen", (2, 10, 8), (2, 11, 8), (2, 11, 8), causal="bottom_right",
         cu_seqlens=VARLEN, dropout_p=0.2),
    # everything at once
    Case("all", (2, 4, 7, 8), (2, 2, 9, 8), (2, 2, 9, 6), causal="top_left", window=(3, 1),
         alibi=True, softcap=2.5, sinks="with -inf", mask=(2, 4, 7, 9), mask_kind="additive",
         dropout_p=0.25),
    Case("all varlen", (1, 4, 10, 8), (1, 2, 11, 8), (1, 2, 11, 8), causal="bottom_right",
         window=(2, None), alibi=True, softcap=4.0, sinks="normal", mask=(10, 11),
         mask_kind="bool", cu_seqlens=VARLEN, dropout_p=0.1),
    # sizes around the CPU engine's tiles
    Case("tiles + 1", (1, 2, 97, 16), (1, 1, 129, 16), (1, 1, 129, 8), causal="bottom_right",
         window=(40, 3), alibi=True, sinks="normal", softcap=5.0),
    Case("tiles - 1 dropout", (1, 1, 95, 8), (1, 1, 127, 8), (1, 1, 127, 8), window=(70, 70),
         dropout_p=0.1),
    # few rows, many keys: the CPU engine splits the keys into chunks merged by their LSE
    Case("split keys", (1, 2, 3, 16), (1, 1, 1500, 16), (1, 1, 1500, 8), causal="bottom_right",
         alibi=True, softcap=5.0, sinks="normal", dropout_p=0.1),
    Case("split keys window", (1, 2, 2, 16), (1, 2, 1500, 16), (1, 2, 1500, 8),
         window=(900, None), sinks="with -inf"),
]


def make_inputs(case, dtype, rng):
    """(q, k, v, grad_out, options) for `case`: normal q, k, v (q scaled up under softcap so that
    the cap bends the scores), and the keyword arguments of sdpa.attention."""
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in (case.query, case.key, case.value))
    if case.softcap is not None:
        q = (q * 3).astype(dtype)
    dout = rng.standard_normal(case.query[:-1] + case.value[-1:]).astype(dtype)
    heads = heads_of(case)
    options = dict(causal=case.causal, scale=case.scale, window=case.window,
                   softcap=case.softcap)
    if case.mask_kind == "bool":
        options["mask"] = rng.random(case.mask) < 0.7
    elif case.mask_kind == "additive":
        mask = rng.standard_normal(case.mask).astype(dtype)
        mask[rng.random(case.mask) < 0.2] = -np.inf
        options["mask"] = mask
    if case.alibi:
        options["alibi_slopes"] = alibi_slopes(heads)
    if case.sinks is not None:
        sinks = rng.standard_normal(heads)
        if case.sinks == "with -inf":
            sinks[0] = -np.inf
        options["sinks"] = sinks
    if case.cu_seqlens is not None:
        options["cu_seqlens_q"], options["cu_seqlens_k"] = case.cu_seqlens
    if case.dropout_p:
        options["dropout_p"] = case.dropout_p
        options["seed"] = int(rng.integers(0, 2**63)) * 2 + 1  # high and low words both used
    return q, k, v, dout, options


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forward_against_reference(case, dtype, backend, rng):
    q, k, v, _, options = make_inputs(case, dtype, rng)
    out, lse = sdpa.attention(q, k, v, return_lse=True, backend=backend, **options)
    expected_out, expected_lse = variant_attention(q, k, v, **options)
    assert out.dtype == dtype and lse.dtype == dtype
    assert out.shape == expected_out.shape and lse.shape == q.shape[:-1]
    assert_close(out, expected_out)
    assert_close(lse, expected_lse, what="lse")
    again = sdpa.attention(q, k, v, backend=backend, **options)
    assert np.array_equal(again, out)  # the seed fixes dropout; without return_lse the same


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backward_against_reference(case, dtype, backend, rng):
    q, k, v, dout, options = make_inputs(case, dtype, rng)
    out, lse = sdpa.attention(q, k, v, return_lse=True, backend=backend, **options)
    grads = sdpa.attention_backward(dout, q, k, v, out, lse, backend=backend, **options)
    expected = variant_backward(dout, q, k, v, **options)
    names = ("grad_query", "grad_key", "grad_value", "grad_sinks")
    if "sinks" in options:
        assert len(grads) == 4 and grads[3].shape == (heads_of(case),)
    else:
        assert len(grads) == 3 and expected[3] is None
    for name, g, x in zip(names, grads, (q, k, v)):
        assert g.dtype == dtype and g.shape == x.shape, name
    for name, g, e in zip(names, grads, expected):
        assert_close(g, e, what=name)


def test_results_do_not_depend_on_threads(rng):
    """Forward and backward with every variant (grad_sinks sums over rows and batch) are bitwise
    identical for 1, 2 and 3 threads, tiled and with split keys."""
    case = dataclasses.replace(CASES[-1], name="threads", query=(2, 2, 150, 16),
                               key=(2, 2, 300, 16), value=(2, 2, 300, 8), window=(200, 10),
                               causal="top_left", alibi=True, softcap=5.0, dropout_p=0.2)
    for case in (case, CASES[-2]):
        q, k, v, dout, options = make_inputs(case, np.float32, rng)
        results = []
        try:
            for threads in (1, 2, 3):
                sdpa.set_num_threads(threads)
                out, lse = sdpa.attention(q, k, v, return_lse=True, **options)
                results.append((out, lse) + sdpa.attention_backward(dout, q, k, v, out, lse,
                                                                    **options))
        finally:
            sdpa.set_num_threads(0)
        for result in results[1:]:
            for a, b in zip(result, results[0]):
                assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# The semantics, spelled out on small cases


def test_window_is_a_band_around_the_diagonal(rng):
    """window=(left, right) sees keys diag - left <= j <= diag + right, diag = i + Lk - Lq
    (bottom-right) without a causal mode and i with causal="top_left"; the same as a bool mask of
    that band."""
    q = rng.standard_normal((2, 5, 8))
    k = rng.standard_normal((2, 8, 8))
    v = rng.standard_normal((2, 8, 3))
    i, j = np.arange(5)[:, None], np.arange(8)[None, :]
    for causal, diag in ((None, i + 3), ("bottom_right", i + 3), ("top_left", i)):
        band = (j >= diag - 2) & (j <= diag + 1)
        if causal is not None:
            band &= j <= diag
        out = sdpa.attention(q, k, v, causal=causal, window=(2, 1))
        assert_close(out, sdpa.attention(q, k, v, mask=band, backend="reference"),
                     what=f"{causal}")
    # an unbounded side: (None, None) is no window at all
    assert_close(sdpa.attention(q, k, v, window=(None, None)), sdpa.attention(q, k, v))
    assert_close(sdpa.attention(q, k, v, window=[None, 0]),
                 sdpa.attention(q, k, v, causal="bottom_right"))


def test_alibi_is_an_additive_bias(rng):
    """ALiBi adds -slope[h]·|i + Lk - Lq - j|, also under a top-left causal mode (FlashAttention's
    convention); under bottom-right causal masking that is the paper's slope·(j - i')."""
    q = rng.standard_normal((1, 2, 4, 8))
    k = rng.standard_normal((1, 2, 6, 8))
    v = rng.standard_normal((1, 2, 6, 8))
    slopes = np.array([0.5, 0.125])
    i, j = np.arange(4)[:, None], np.arange(6)[None, :]
    bias = -slopes[:, None, None] * np.abs(i + 2 - j)
    for causal in (None, "top_left", "bottom_right"):
        out = sdpa.attention(q, k, v, causal=causal, alibi_slopes=slopes)
        assert_close(out, sdpa.attention(q, k, v, causal=causal, mask=bias), what=str(causal))
    assert_close(sdpa.attention(q, k, v, alibi_slopes=[0.0, 0.0]), sdpa.attention(q, k, v))


def test_softcap_caps_the_scaled_scores(rng):
    """softcap c: scores become c·tanh(s / c) after scaling, before the mask; the mask is added
    uncapped."""
    q = 4 * rng.standard_normal((3, 5, 8))
    k = rng.standard_normal((3, 7, 8))
    v = rng.standard_normal((3, 7, 2))
    mask = rng.standard_normal((5, 7))
    s = 0.5 * q @ k.swapaxes(-1, -2)
    capped = 2.0 * np.tanh(s / 2.0) + mask
    p = np.exp(capped - capped.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ v
    out = sdpa.attention(q, k, v, scale=0.5, softcap=2.0, mask=mask)
    assert_close(out, expected)
    # a huge cap changes nothing measurable
    assert_close(sdpa.attention(q, k, v, softcap=1e12), sdpa.attention(q, k, v), atol=1e-9)


def test_sinks_join_the_denominator(rng):
    """A sink is an extra logit per head with a zero value: the same as a key whose score is the
    sink and whose value is 0. lse includes it; a row with no visible key gives out = 0 and
    lse = sink; a -inf sink is no sink."""
    q = rng.standard_normal((2, 5, 8))
    k = rng.standard_normal((2, 7, 8))
    v = rng.standard_normal((2, 7, 4))
    sinks = np.array([0.7, -np.inf])
    out, lse = sdpa.attention(q, k, v, sinks=sinks, return_lse=True)
    k_ext = np.concatenate([k, np.zeros((2, 1, 8))], axis=1)
    v_ext = np.concatenate([v, np.zeros((2, 1, 4))], axis=1)
    bias = np.zeros((2, 5, 8))
    bias[..., 7] = sinks[:, None]  # score of the extra key: q·0 + sink
    ext_out, ext_lse = sdpa.attention(q, k_ext, v_ext, mask=bias, return_lse=True)
    assert_close(out, ext_out)
    assert_close(lse, ext_lse, what="lse")
    plain_out, plain_lse = sdpa.attention(q[1], k[1], v[1], return_lse=True)
    assert_close(out[1], plain_out)
    assert_close(lse[1], plain_lse, what="lse without sink")

    nothing = np.zeros((5, 7), dtype=bool)
    out, lse = sdpa.attention(q, k, v, sinks=sinks, mask=nothing, return_lse=True)
    assert np.all(out == 0)
    assert np.all(lse[0] == 0.7) and np.all(lse[1] == -np.inf)


def test_varlen_equals_one_call_per_sequence(rng):
    """Each packed sequence gives what attention on that sequence alone gives, with causal,
    window and ALiBi at positions within the sequence; empty sequences give nothing and a
    sequence without keys gives zeros (lse = sink)."""
    cu_q, cu_k = VARLEN
    heads = 4
    q = rng.standard_normal((heads, cu_q[-1], 8))
    k = rng.standard_normal((2, cu_k[-1], 8))
    v = rng.standard_normal((2, cu_k[-1], 5))
    sinks = rng.standard_normal(heads)
    options = dict(causal="bottom_right", window=(2, 1), alibi_slopes=alibi_slopes(heads),
                   sinks=sinks, softcap=3.0)
    out, lse = sdpa.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True,
                              **options)
    assert out.shape == (heads, cu_q[-1], 5) and lse.shape == (heads, cu_q[-1])
    for s in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        one_out, one_lse = sdpa.attention(q[:, rows], k[:, keys], v[:, keys], return_lse=True,
                                          **options)
        assert_close(out[:, rows], one_out, what=f"sequence {s} out")
        assert_close(lse[:, rows], one_lse, what=f"sequence {s} lse")
    no_keys = slice(cu_q[3], cu_q[4])  # sequence 3 has queries but no keys
    assert np.all(out[:, no_keys] == 0)
    assert_close(lse[:, no_keys], np.broadcast_to(sinks[:, None], (heads, 2)), what="lse")


def test_varlen_from_flash_attention_layout(rng):
    """FlashAttention packs (total, H, D); .transpose(1, 0, 2) is the (H, total, D) operand as a
    view, which sdpa reads in place (no copy), and gives what a contiguous copy gives; rank 4
    (1, H, total, D) is the same call. The gradients come back as (H, total, D)."""
    from sdpa._arrays import as_operand

    cu_q, cu_k = np.array([0, 4, 9], np.int32), np.array([0, 6, 8], np.int32)  # int32 like FA
    packed_q = rng.standard_normal((9, 3, 16))  # (total_q, H, D)
    packed_kv = rng.standard_normal((8, 2, 3, 16))  # (total_k, k/v, H, D)
    q = packed_q.transpose(1, 0, 2)
    k, v = packed_kv[:, 0].transpose(1, 0, 2), packed_kv[:, 1].transpose(1, 0, 2)
    assert np.shares_memory(q, packed_q) and np.shares_memory(k, packed_kv)
    assert not q.flags.c_contiguous
    for x in (q, k, v):
        assert as_operand("query", x) is x  # read in place, not copied
    options = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal="top_left")
    out, lse = sdpa.attention(q, k, v, return_lse=True, **options)
    copies = [np.ascontiguousarray(x) for x in (q, k, v)]
    assert np.array_equal(out, sdpa.attention(*copies, **options))
    assert np.array_equal(out, sdpa.attention(q[None], k[None], v[None], **options)[0])
    assert_close(out, variant_attention(q, k, v, **options)[0])
    dout = rng.standard_normal(out.shape)
    grads = sdpa.attention_backward(dout, q, k, v, out, lse, **options)
    assert [g.shape for g in grads] == [(3, 9, 16), (3, 8, 16), (3, 8, 16)]
    for g, e in zip(grads, variant_backward(dout, q, k, v, **options)):
        assert_close(g, e)
    assert grads[0].transpose(1, 0, 2).shape == packed_q.shape  # back to (total, H, D)


def test_varlen_offsets_as_lists_arrays_and_uint(rng):
    q, k, v = (rng.standard_normal((2, 6, 4)) for _ in range(3))
    expected = sdpa.attention(q, k, v, cu_seqlens_q=[0, 2, 6], cu_seqlens_k=[0, 3, 6])
    for cu_q, cu_k in (((0, 2, 6), (0, 3, 6)),
                       (np.array([0, 2, 6], np.uint8), np.array([0, 3, 6], np.uint64)),
                       (np.array([0, 2, 6], np.int16), [0, 3, 6])):
        assert np.array_equal(sdpa.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k),
                              expected)


# ---------------------------------------------------------------------------------------------
# Finite differences: the gradients of softcap, ALiBi and sinks without a hand-written backward


def finite_difference_check(q, k, v, dout, options, backend):
    """∂(Σ grad_out ∘ out)/∂x by central differences of sdpa.attention in float64 equals
    attention_backward for x in (q, k, v, sinks) (error of the differences: O(h²) truncation +
    O(eps/h) rounding, about 1e-8 at h = 1e-5)."""
    out, lse = sdpa.attention(q, k, v, return_lse=True, backend=backend, **options)
    grads = sdpa.attention_backward(dout, q, k, v, out, lse, backend=backend, **options)
    sinks = options.get("sinks")
    inputs = [q, k, v] + ([np.asarray(sinks, np.float64)] if sinks is not None else [])

    def loss(args):
        q, k, v, *rest = args
        call = dict(options, sinks=rest[0]) if rest else options
        return float(np.sum(dout * sdpa.attention(q, k, v, backend=backend, **call)))

    h = 1e-5
    for index, (x, grad) in enumerate(zip(inputs, grads)):
        numeric = np.zeros_like(x)
        for pos in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[pos] += h
            minus[pos] -= h
            args = list(inputs)
            args[index] = plus
            f_plus = loss(args)
            args[index] = minus
            numeric[pos] = (f_plus - loss(args)) / (2 * h)
        assert_close(grad, numeric, atol=1e-7, rtol=1e-6, what=f"argument {index}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["softcap", "alibi", "sinks", "all + dropout"])
def test_finite_differences(variant, backend):
    rng = np.random.default_rng(17)
    q = 2 * rng.standard_normal((1, 2, 3, 4))
    k = rng.standard_normal((1, 1, 5, 4))
    v = rng.standard_normal((1, 1, 5, 3))
    dout = rng.standard_normal((1, 2, 3, 3))
    options = dict(causal="bottom_right", mask=rng.standard_normal((3, 5)))
    if variant in ("softcap", "all + dropout"):
        options["softcap"] = 1.5
    if variant in ("alibi", "all + dropout"):
        options["alibi_slopes"] = [0.5, 0.25]
    if variant in ("sinks", "all + dropout"):
        options["sinks"] = np.array([0.3, -1.2])
    if variant == "all + dropout":
        options.update(window=(2, 0), dropout_p=0.3, seed=99)  # the backward regenerates it
    finite_difference_check(q, k, v, dout, options, backend)


# ---------------------------------------------------------------------------------------------
# Dropout


def uniform_attention(heads=4, q_len=256, kv_len=64, dtype=np.float64):
    """q = 0 gives every visible key the weight 1 / kv_len, and v = I makes out[.., i, j] that
    weight after dropout: 0 where dropped, 1 / (kv_len (1 - p)) where kept."""
    q = np.zeros((1, heads, q_len, 8), dtype)
    k = np.ones((1, heads, kv_len, 8), dtype)
    v = np.broadcast_to(np.eye(kv_len, dtype=dtype), (1, heads, kv_len, kv_len))
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_and_scaling(p, backend):
    """Each weight is kept with probability 1 - p (within 5 standard deviations over 65536
    weights), kept weights are scaled by exactly 1 / (1 - p), and which ones are kept is the
    Philox rule of src/core/dropout.h, element by element."""
    q, k, v = uniform_attention()
    seed = 0x0123456789ABCDEF
    out = sdpa.attention(q, k, v, dropout_p=p, seed=seed, backend=backend)
    kept = out != 0
    assert_close(out[kept], np.full(kept.sum(), 1 / (64 * (1 - p))), what="kept weights")
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n), kept.mean()
    b, h, i, j = np.ogrid[0:1, 0:4, 0:256, 0:64]
    assert np.array_equal(kept, dropout_kept(p, seed, b, h, i, j))


def test_dropout_is_unbiased(rng):
    """Averaged over seeds, the dropped-out output is the output without dropout (dropout scales
    the kept weights by 1 / (1 - p)): every element within 5 standard errors."""
    q, k, v = (rng.standard_normal((2, 6, 8)) for _ in range(3))
    expected = sdpa.attention(q, k, v)
    samples = np.stack([sdpa.attention(q, k, v, dropout_p=0.4, seed=s) for s in range(800)])
    error = np.abs(samples.mean(axis=0) - expected)
    standard_error = samples.std(axis=0) / np.sqrt(len(samples))
    assert np.all(error < 5 * standard_error + 1e-12), (error / standard_error).max()


def test_dropout_reproducible(rng):
    """The same seed gives bitwise the same result, also for other thread counts, and the same
    dropout mask on either backend; different seeds, and seed=None twice, give different
    results; lse does not depend on dropout."""
    q, k, v = (rng.standard_normal((2, 4, 40, 16)).astype(np.float32) for _ in range(3))
    options = dict(dropout_p=0.3, causal="top_left")
    out, lse = sdpa.attention(q, k, v, seed=7, return_lse=True, **options)
    try:
        for threads in (1, 2, 3):
            sdpa.set_num_threads(threads)
            assert np.array_equal(sdpa.attention(q, k, v, seed=7, **options), out)
    finally:
        sdpa.set_num_threads(0)
    assert_close(sdpa.attention(q, k, v, seed=7, backend="reference", **options), out)
    assert not np.array_equal(sdpa.attention(q, k, v, seed=8, **options), out)
    assert not np.array_equal(sdpa.attention(q, k, v, seed=7 + 2**32, **options), out)
    assert not np.array_equal(sdpa.attention(q, k, v, **options),
                              sdpa.attention(q, k, v, **options))
    assert_close(lse, sdpa.attention(q, k, v, causal="top_left", return_lse=True)[1], what="lse")


def test_dropout_seed_range(rng):
    """Seeds use all 64 bits: 0, 2^32 - 1, 2^32 and 2^64 - 1 each give the reference's mask."""
    q, k, v = (rng.standard_normal((2, 9, 8)) for _ in range(3))
    for seed in (0, 2**32 - 1, 2**32, 2**64 - 1, np.uint64(2**63 + 5)):
        out = sdpa.attention(q, k, v, dropout_p=0.5, seed=seed)
        assert_close(out, variant_attention(q, k, v, dropout_p=0.5, seed=int(seed))[0],
                     what=f"seed {seed}")


def test_dropout_zero_ignores_the_seed(rng):
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    out = sdpa.attention(q, k, v)
    assert np.array_equal(sdpa.attention(q, k, v, dropout_p=0.0, seed=123), out)
    assert np.array_equal(sdpa.attention(q, k, v, dropout_p=0, seed=None), out)


def test_backward_regenerates_the_mask(rng):
    """With v = I, out = P∘F (the dropped-out weights) and, for grad_out = 1, grad_value[j] is
    the column sum of out: the backward used the forward's mask."""
    q, k, v = uniform_attention(heads=2, q_len=16, kv_len=8)
    q = rng.standard_normal(q.shape)
    out, lse = sdpa.attention(q, k, v, dropout_p=0.5, seed=5, return_lse=True)
    _, _, dv = sdpa.attention_backward(np.ones_like(out), q, k, v, out, lse, dropout_p=0.5,
                                       seed=5)
    assert_close(dv, np.broadcast_to(out.sum(axis=-2)[..., None], dv.shape))


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention and explain


def test_sdpa_honours_dropout(rng):
    q, k, v = uniform_attention()
    out = sdpa.scaled_dot_product_attention(q, k, v, dropout_p=0.25, seed=11)
    assert np.array_equal(out, sdpa.attention(q, k, v, dropout_p=0.25, seed=11))
    kept = (out != 0).mean()
    assert abs(kept - 0.75) < 5 * np.sqrt(0.25 * 0.75 / out.size)
    assert not np.array_equal(out, sdpa.scaled_dot_product_attention(q, k, v, dropout_p=0.25))
    q, k, v = (rng.standard_normal((2, 3, 5, 8)) for _ in range(3))
    out = sdpa.scaled_dot_product_attention(q, k, v, dropout_p=0.5, is_causal=True, seed=3)
    expected = variant_attention(q, k, v, causal="top_left", dropout_p=0.5, seed=3)[0]
    assert_close(out, expected)


def test_sdpa_extras(rng):
    """window, alibi_slopes, softcap and sinks as keyword-only extras, per head of dim -3; with
    is_causal=True the window is aligned top-left."""
    q = rng.standard_normal((2, 4, 5, 8))
    k = rng.standard_normal((2, 2, 7, 8))
    v = rng.standard_normal((2, 2, 7, 8))
    extras = dict(window=(2, 1), alibi_slopes=alibi_slopes(4), softcap=3.0,
                  sinks=rng.standard_normal(4))
    for is_causal in (False, True):
        out = sdpa.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True,
                                                **extras)
        expected = variant_attention(q, k, v, causal="top_left" if is_causal else None,
                                     **extras)[0]
        assert_close(out, expected, what=f"is_causal={is_causal}")


def test_sdpa_per_head_extras_with_many_batch_dims(rng):
    """With more than two batch dims, sinks and ALiBi slopes still belong to dim -3 (the batch
    dims before it are merged), also when the strides would allow another split."""
    q = rng.standard_normal((2, 3, 4, 5, 8))
    k = rng.standard_normal((1, 3, 4, 6, 8))  # broadcast over dim 0
    v = rng.standard_normal((2, 3, 4, 6, 8))
    sinks, slopes = rng.standard_normal(4), alibi_slopes(4)
    out = sdpa.scaled_dot_product_attention(q, k, v, sinks=sinks, alibi_slopes=slopes)
    expected = variant_attention(q.reshape(6, 4, 5, 8), np.broadcast_to(k, v.shape).reshape(
        6, 4, 6, 8), v.reshape(6, 4, 6, 8), sinks=sinks, alibi_slopes=slopes)[0]
    assert_close(out, expected.reshape(2, 3, 4, 5, 8))
    with pytest.raises(ValueError, match=r"sinks has 3 values but must have one per "
                                         r"query head \(4\)"):
        sdpa.scaled_dot_product_attention(q, k, v, sinks=[0, 0, 0])


def test_explain_takes_the_variants():
    x = np.zeros((2, 6, 8))
    plan = sdpa.explain(x, x, x, causal="top_left", window=(2, 0), alibi_slopes=[1, 2],
                        softcap=5, sinks=[0, 0], cu_seqlens_q=[0, 6], cu_seqlens_k=[0, 6],
                        dropout_p=0.1)
    assert plan.startswith("sdpa plan: backend=")
    with pytest.raises(ValueError, match=r"^sdpa: window\[0\] is -1 but must be >= 0"):
        sdpa.explain(x, x, x, window=(-1, 0))


# ---------------------------------------------------------------------------------------------
# Errors: every bad keyword names what is wrong


def _arguments():
    return dict(query=np.ones((3, 4, 8)), key=np.ones((3, 5, 8)), value=np.ones((3, 5, 2)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(window=5), TypeError, r"^sdpa: window is 5 but must be None or a pair \(left, right\)"),
    (dict(window=(1, 2, 3)), ValueError, r"^sdpa: window has 3 values but must be a pair"),
    (dict(window=(1.5, None)), TypeError, r"^sdpa: window\[0\] is 1.5 but must be an int"),
    (dict(window=(None, True)), TypeError, r"^sdpa: window\[1\] is True but must be"),
    (dict(window=("1", 1)), TypeError, r"^sdpa: window\[0\] is '1' but must be an int"),
    (dict(window=(-1, 0)), ValueError, r"^sdpa: window\[0\] is -1 but must be >= 0"),
    (dict(window=(0, -3)), ValueError, r"^sdpa: window\[1\] is -3 but must be >= 0"),
    (dict(window=(-2**70, 0)), ValueError, r"^sdpa: window\[0\] is -\d+ but must be >= 0"),
    (dict(alibi_slopes=[1, 2]), ValueError,
     r"^sdpa: alibi_slopes has 2 values but must have one per query head \(3\)"),
    (dict(alibi_slopes=[]), ValueError,
     r"^sdpa: alibi_slopes has 0 values but must have one per query head \(3\)"),
    (dict(alibi_slopes=[[1, 2, 3]]), ValueError,
     r"^sdpa: alibi_slopes has shape \(1, 3\) but must be 1-D"),
    (dict(alibi_slopes=0.5), ValueError, r"^sdpa: alibi_slopes has shape \(\) but must be 1-D"),
    (dict(alibi_slopes=["a", "b", "c"]), TypeError,
     r"^sdpa: alibi_slopes.dtype is <U1 but must be a real number dtype"),
    (dict(alibi_slopes=[1, np.nan, 1]), ValueError,
     r"^sdpa: alibi_slopes\[1\] is nan but must be finite"),
    (dict(alibi_slopes=[1, 1, -np.inf]), ValueError,
     r"^sdpa: alibi_slopes\[2\] is -inf but must be finite"),
    (dict(softcap="x"), TypeError, r"^sdpa: softcap is 'x' but must be a real number or None"),
    (dict(softcap=[1.0]), TypeError,
     r"^sdpa: softcap is \[1.0\] but must be a real number or None"),
    (dict(softcap=0), ValueError, r"^sdpa: softcap is 0 but must be finite and > 0"),
    (dict(softcap=-2.5), ValueError, r"^sdpa: softcap is -2.5 but must be finite"),
    (dict(softcap=np.inf), ValueError, r"^sdpa: softcap is inf but must be finite"),
    (dict(sinks=[0, np.inf, 0]), ValueError,
     r"^sdpa: sinks\[1\] is inf but must be finite or -inf"),
    (dict(sinks=[0, 0, np.nan]), ValueError,
     r"^sdpa: sinks\[2\] is nan but must be finite or -inf"),
    (dict(sinks=[0, 0]), ValueError,
     r"^sdpa: sinks has 2 values but must have one per query head \(3\)"),
    (dict(sinks=np.ones(3, complex)), TypeError, r"^sdpa: sinks.dtype is complex128 but must"),
    (dict(cu_seqlens_q=[0.0, 4.0], cu_seqlens_k=[0, 5]), TypeError,
     r"^sdpa: cu_seqlens_q.dtype is float64 but must be an integer dtype"),
    (dict(cu_seqlens_q=[0, 4], cu_seqlens_k=np.array([0, 5], np.float32)), TypeError,
     r"^sdpa: cu_seqlens_k.dtype is float32 but must be an integer dtype"),
    (dict(cu_seqlens_q=[0, 4], cu_seqlens_k=[False, True]), TypeError,
     r"^sdpa: cu_seqlens_k.dtype is bool but must be an integer dtype"),
    (dict(cu_seqlens_q=[0, 4]), ValueError,
     r"^sdpa: cu_seqlens_q is set but cu_seqlens_k is not"),
    (dict(cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_k is set but cu_seqlens_q is not"),
    (dict(cu_seqlens_q=[], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q has 0 values but must have at least 2"),
    (dict(cu_seqlens_q=[4], cu_seqlens_k=[5]), ValueError,
     r"^sdpa: cu_seqlens_q has 1 values but must have at least 2"),
    (dict(cu_seqlens_q=[[0, 4]], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q has shape \(1, 2\) but must be 1-D"),
    (dict(cu_seqlens_q=[0, 2, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q has 3 values but cu_seqlens_k has 2"),
    (dict(cu_seqlens_q=[0, 3], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q\[1\] is 3 but must be 4 \(q_len\)"),
    (dict(cu_seqlens_q=[0, 4], cu_seqlens_k=[0, 6]), ValueError,
     r"^sdpa: cu_seqlens_k\[1\] is 6 but must be 5 \(kv_len\)"),
    (dict(cu_seqlens_q=[1, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q\[0\] is 1 but must be 0"),
    (dict(cu_seqlens_q=[0, 3, 2, 4], cu_seqlens_k=[0, 1, 2, 5]), ValueError,
     r"^sdpa: cu_seqlens_q\[2\] is 2, below cu_seqlens_q\[1\] = 3"),
    (dict(cu_seqlens_q=[0, 4], cu_seqlens_k=np.array([0, 2**64 - 1], np.uint64)), ValueError,
     r"^sdpa: cu_seqlens_k\[1\] is 18446744073709551615 but must be in \[0, 2\*\*63\)"),
    (dict(query=np.ones((2, 3, 4, 8)), key=np.ones((2, 3, 5, 8)), value=np.ones((2, 3, 5, 2)),
          cu_seqlens_q=[0, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: query.shape batch is 2 but must be 1 with cu_seqlens_q"),
    (dict(dropout_p=1.5), ValueError, r"^sdpa: dropout_p is 1.5 but must be in \[0, 1\]"),
    (dict(dropout_p=-0.1), ValueError, r"^sdpa: dropout_p is -0.1 but must be in"),
    (dict(dropout_p=np.nan), ValueError, r"^sdpa: dropout_p is nan but must be in"),
    (dict(dropout_p="0.1"), TypeError, r"^sdpa: dropout_p is '0.1' but must be a real number"),
    (dict(dropout_p=None), TypeError, r"^sdpa: dropout_p is None but must be a real number"),
    (dict(dropout_p=0.1, seed=-1), ValueError, r"^sdpa: seed is -1 but must be in \[0, 2\*\*64\)"),
    (dict(dropout_p=0.1, seed=2**64), ValueError, r"^sdpa: seed is 18446744073709551616 but"),
    (dict(dropout_p=0.1, seed=1.5), TypeError, r"^sdpa: seed is 1.5 but must be an int"),
    (dict(seed=True), TypeError, r"^sdpa: seed is True but must be an int"),
    (dict(seed="1"), TypeError, r"^sdpa: seed is '1' but must be an int"),
])
def test_errors(kwargs, error, match):
    args = _arguments()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sdpa.attention(**args)


def test_backward_errors(rng):
    q, k, v = (rng.standard_normal((2, 4, 8)) for _ in range(3))
    out, lse = sdpa.attention(q, k, v, dropout_p=0.1, seed=1, return_lse=True)
    with pytest.raises(ValueError, match=r"^sdpa: seed is None but dropout_p is 0.1; the "
                                         r"backward must be given the forward's seed"):
        sdpa.attention_backward(out, q, k, v, out, lse, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"^sdpa: sinks has 3 values"):
        sdpa.attention_backward(out, q, k, v, out, lse, sinks=[1, 2, 3])
    with pytest.raises(TypeError, match=r"^sdpa: window is 'x' but must be None or a pair"):
        sdpa.attention_backward(out, q, k, v, out, lse, window="x")


def test_sdpa_errors():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"^sdpa: dropout_p is 2 but must be in"):
        sdpa.scaled_dot_product_attention(x, x, x, dropout_p=2)
    with pytest.raises(ValueError, match=r"^sdpa: seed is -5 but must be in \[0, 2\*\*64\)"):
        sdpa.scaled_dot_product_attention(x, x, x, dropout_p=0.5, seed=-5)
    with pytest.raises(ValueError, match=r"^sdpa: alibi_slopes has 3 values but must "
                                         r"have one per query head \(2\)"):
        sdpa.scaled_dot_product_attention(x, x, x, alibi_slopes=[1, 2, 3])
    with pytest.raises(TypeError, match=r"takes from 3 to 8 positional arguments"):
        sdpa.scaled_dot_product_attention(x, x, x, None, 0.0, False, None, False, 1)


# ---------------------------------------------------------------------------------------------
# PyTorch: the variants rebuilt as an explicit float mask (and an extra key for the sink)


def explicit_bias(q_len, kv_len, heads, causal=None, window=None, slopes=None):
    """The additive float mask (heads, Lq, Lk) of causal, window and ALiBi, built from the rules:
    -inf where a key is not visible, -slope[h]·|i + Lk - Lq - j| elsewhere."""
    i, j = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
    bottom_right = i + kv_len - q_len
    visible = np.ones((q_len, kv_len), dtype=bool)
    if causal == "top_left":
        visible &= j <= i
    elif causal == "bottom_right":
        visible &= j <= bottom_right
    if window is not None:
        diag = i if causal == "top_left" else bottom_right
        if window[0] is not None:
            visible &= j >= diag - window[0]
        if window[1] is not None:
            visible &= j <= diag + window[1]
    bias = np.zeros((heads, q_len, kv_len))
    if slopes is not None:
        bias -= np.asarray(slopes)[:, None, None] * np.abs(bottom_right - j)
    return np.where(visible, bias, -np.inf)


def torch_explicit(q, k, v, bias, scale=None, softcap=None, sinks=None):
    """Attention written out in torch ops (autograd differentiates it), GQA by
    repeat_interleave: softcap, + bias, softmax over the keys and a sink column, · V."""
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s + bias
    if sinks is not None:
        column = sinks.view(-1, 1, 1).expand(s.shape[:-1] + (1,))
        s = torch.cat([s, column], dim=-1)
    p = torch.softmax(s, dim=-1)
    if sinks is not None:
        p = p[..., :-1]
    return p @ v


TORCH_CASES = [
    dict(window=(2, 1)),
    dict(window=(3, None), causal="top_left"),
    dict(window=(None, 0), causal="bottom_right"),
    dict(alibi=True),
    dict(alibi=True, causal="bottom_right"),
    dict(softcap=2.0),
    dict(sinks=True),
    dict(sinks=True, causal="top_left", window=(4, 0), alibi=True, softcap=5.0),
]


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", TORCH_CASES, ids=[str(c) for c in TORCH_CASES])
def test_against_torch(spec, dtype):
    """Forward: torch's scaled_dot_product_attention with the explicit mask (a sink is one more
    key whose score is the sink: a zero key, a zero value and the sink in the mask's column), or
    the explicit torch computation for softcap. Backward: sdpa.torch.attention's gradients,
    sinks.grad included, against torch.autograd through the explicit computation."""
    tdtype = getattr(torch, dtype)
    tol = 5e-5 if dtype == "float32" else 1e-10
    gen = torch.Generator().manual_seed(3)
    heads, kv_heads, q_len, kv_len = 4, 2, 6, 9
    q = 2 * torch.randn(2, heads, q_len, 16, generator=gen, dtype=tdtype)
    k = torch.randn(2, kv_heads, kv_len, 16, generator=gen, dtype=tdtype)
    v = torch.randn(2, kv_heads, kv_len, 8, generator=gen, dtype=tdtype)
    slopes = alibi_slopes(heads) if spec.get("alibi") else None
    sinks = torch.randn(heads, generator=gen, dtype=tdtype) if spec.get("sinks") else None
    causal, window, softcap = spec.get("causal"), spec.get("window"), spec.get("softcap")
    bias = torch.from_numpy(explicit_bias(q_len, kv_len, heads, causal, window, slopes)).to(tdtype)
    assert torch.isfinite(bias).any(-1).all()  # every row sees a key (torch: no NaN rows)

    options = dict(causal=causal, window=window, alibi_slopes=slopes, softcap=softcap)
    out = sdpa.attention(q, k, v, sinks=sinks, **options)
    if softcap is None:
        k_ext, v_ext, bias_ext = k, v, bias
        if sinks is not None:
            k_ext = torch.cat([k, torch.zeros(2, kv_heads, 1, 16, dtype=tdtype)], dim=-2)
            v_ext = torch.cat([v, torch.zeros(2, kv_heads, 1, 8, dtype=tdtype)], dim=-2)
            bias_ext = torch.cat([bias, sinks.view(-1, 1, 1).expand(heads, q_len, 1)], dim=-1)
        expected = F.scaled_dot_product_attention(q, k_ext, v_ext, attn_mask=bias_ext,
                                                  enable_gqa=True)
    else:
        expected = torch_explicit(q, k, v, bias, softcap=softcap, sinks=sinks)
    np.testing.assert_allclose(out, expected.numpy(), atol=tol, rtol=tol)

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    sink_leaf = sinks.clone().requires_grad_() if sinks is not None else None
    ours = sdpa.torch.attention(*leaves, sinks=sink_leaf, **options)
    dout = torch.randn(ours.shape, generator=gen, dtype=tdtype)
    ours.backward(dout)
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_sinks = sinks.clone().requires_grad_() if sinks is not None else None
    reference = torch_explicit(*ref_leaves, bias, softcap=softcap, sinks=ref_sinks)
    reference.backward(dout)
    np.testing.assert_allclose(ours.detach(), reference.detach(), atol=tol, rtol=tol)
    for name, a, b in zip(("query", "key", "value", "sinks"), leaves + [sink_leaf],
                          ref_leaves + [ref_sinks]):
        if a is None:
            continue
        assert a.grad.dtype == tdtype, name
        np.testing.assert_allclose(a.grad, b.grad, atol=tol, rtol=tol, err_msg=name)


@needs_torch
def test_torch_gradcheck_with_variants():
    """torch.autograd.gradcheck (finite differences in float64) through sdpa.torch.attention with
    every variant, sinks differentiable, dropout with a fixed seed."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    sinks = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)

    def f(q, k, v, sinks):
        return sdpa.torch.attention(q, k, v, sinks=sinks, causal="bottom_right", window=(3, 0),
                                    alibi_slopes=torch.tensor([0.5, 0.25]), softcap=2.0,
                                    dropout_p=0.2, seed=42)

    assert torch.autograd.gradcheck(f, (q, k, v, sinks))


@needs_torch
def test_torch_varlen_and_dropout():
    """sdpa.torch.attention with int32 cu_seqlens tensors (FlashAttention's packed layout,
    transposed) equals sdpa.attention; with dropout and seed=None each call draws a seed and its
    backward uses the same one: with v = I, grad_value is the column sums of out."""
    gen = torch.Generator().manual_seed(9)
    packed = torch.randn(10, 2, 8, generator=gen, dtype=torch.float64)  # (total, H, D)
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    q = packed.transpose(0, 1)
    out = sdpa.torch.attention(q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu, causal="top_left")
    expected = sdpa.attention(q.numpy(), q.numpy(), q.numpy(), cu_seqlens_q=cu.numpy(),
                              cu_seqlens_k=cu.numpy(), causal="top_left")
    assert np.array_equal(out.numpy(), expected)

    q = torch.randn(1, 2, 16, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    v = torch.eye(8, dtype=torch.float64).expand(1, 2, 8, 8).clone().requires_grad_()
    out = sdpa.torch.attention(q, k, v, dropout_p=0.5)
    out.sum().backward()
    column_sums = out.detach().sum(dim=-2)
    assert torch.allclose(v.grad, column_sums[..., None].expand_as(v.grad))
    assert (out == 0).any() and not torch.equal(out, sdpa.torch.attention(q, k, v, dropout_p=0.5))


@needs_torch
def test_dropout_statistics_like_torch():
    """sdpa's and PyTorch's dropout draw different random numbers, so only their statistics are
    compared: both keep 1 - p of the weights (within 5 standard deviations) and scale them by
    1 / (1 - p)."""
    p = 0.3
    q, k, v = uniform_attention()
    ours = sdpa.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1)
    torch.manual_seed(0)
    theirs = F.scaled_dot_product_attention(*(torch.from_numpy(np.ascontiguousarray(x))
                                              for x in (q, k, v)), dropout_p=p).numpy()
    bound = 5 * np.sqrt(p * (1 - p) / ours.size)
    for name, out in (("sdpa", ours), ("torch", theirs)):
        kept = out != 0
        assert abs(kept.mean() - (1 - p)) < bound, name
        assert_close(out[kept], np.full(kept.sum(), 1 / (64 * (1 - p))), what=name)
