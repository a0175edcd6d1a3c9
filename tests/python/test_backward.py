"""sdpa.attention_backward (the gradients of sdpa.attention) against a numpy float64 reference
backward written here, and central finite differences of sdpa.attention in float64."""

import dataclasses
import threading
from typing import Optional, Tuple

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close


def reference_backward(grad_out, query, key, value, mask=None, causal=None, scale=None):
    """(grad_query, grad_key, grad_value) in float64: the textbook softmax-attention backward.

    query (..., H, Lq, D), key (..., Hkv, Lkv, D), value (..., Hkv, Lkv, Dv), grad_out
    (..., H, Lq, Dv); H % Hkv == 0 (GQA: query head h reads kv head h // (H // Hkv)). mask: bool
    (True = attend) or float (added), broadcastable to the scores. causal: None, "top_left"
    (j <= i) or "bottom_right" (j <= i + Lkv - Lq). With S the scaled, masked scores:
      P = softmax(S) by row (0 for a row with no visible key)
      dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP − rowsum(dP ∘ P));  dQ = scale·dS K;  dK = scale·dSᵀ Q
    and with GQA dK, dV are summed over the query heads of each kv head.
    """
    q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (query, key, value, grad_out))
    heads, kv_heads = (q.shape[-3], k.shape[-3]) if q.ndim >= 3 else (1, 1)
    group = heads // kv_heads if kv_heads else 1
    if group > 1:
        k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    q_len, kv_len, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim) if head_dim else 1.0

    # pass 1: scores, -inf where a key is not visible
    scores = scale * (q @ np.swapaxes(k, -1, -2))
    visible = np.ones((q_len, kv_len), dtype=bool)
    if causal == "top_left":
        visible = np.tril(visible)
    elif causal == "bottom_right":
        visible = np.tril(visible, k=kv_len - q_len)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            visible = visible & mask
        else:
            scores = scores + mask.astype(np.float64)
    visible = visible & (scores != -np.inf)
    scores = np.where(visible, scores, -np.inf)
    # pass 2: P, with the row max 0 for a row with no visible key (exp gives 0, not NaN)
    row_max = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(scores - row_max)
    row_sum = p.sum(axis=-1, keepdims=True)
    p = p / np.where(row_sum > 0, row_sum, 1.0)
    # pass 3: gradients; invisible keys have P = 0, so their K/V rows (maybe NaN) are not read
    v_visible = np.where(visible[..., None], v[..., None, :, :], 0.0)  # (..., Lq, Lkv, Dv)
    k_visible = np.where(visible[..., None], k[..., None, :, :], 0.0)
    grad_v = np.swapaxes(p, -1, -2) @ dout
    grad_p = np.einsum("...ie,...ije->...ij", dout, v_visible)
    grad_s = p * (grad_p - (grad_p * p).sum(axis=-1, keepdims=True))
    grad_q = scale * np.einsum("...ij,...ijd->...id", grad_s, k_visible)
    grad_k = scale * (np.swapaxes(grad_s, -1, -2) @ q)
    if group > 1:
        grad_k = grad_k.reshape(grad_k.shape[:-3] + (kv_heads, group) + grad_k.shape[-2:]).sum(-3)
        grad_v = grad_v.reshape(grad_v.shape[:-3] + (kv_heads, group) + grad_v.shape[-2:]).sum(-3)
    return grad_q, grad_k, grad_v


def forward_and_backward(q, k, v, dout, **options):
    out, lse = sdpa.attention(q, k, v, return_lse=True, **options)
    return sdpa.attention_backward(dout, q, k, v, out, lse, **options)


def assert_grads_close(grads, expected, atol=None, rtol=None):
    for name, g, e in zip(("grad_query", "grad_key", "grad_value"), grads, expected):
        assert_close(g, e, atol=atol, rtol=rtol, what=name)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    query: Tuple[int, ...]
    key: Tuple[int, ...]
    value: Tuple[int, ...]
    causal: Optional[str] = None
    mask: Optional[Tuple[int, ...]] = None  # shape, broadcast to the scores
    mask_kind: Optional[str] = None         # "bool" or "additive" (-inf at about 20%)
    scale: Optional[float] = None


# Tolerance: sdpa_reference.TOLERANCE. On these sizes sdpa's float32 gradients are within 2e-6 of
# the float64 reference, about twice the error of the same numpy code run in float32.
CASES = [
    Case("2d", (5, 8), (7, 8), (7, 3)),
    Case("3d", (3, 5, 8), (3, 7, 8), (3, 7, 8)),
    Case("4d Dv != D", (2, 3, 17, 16), (2, 3, 19, 16), (2, 3, 19, 5)),
    Case("size 1", (1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1)),
    Case("odd head dim", (2, 2, 3, 7), (2, 2, 2, 7), (2, 2, 2, 3)),
    Case("gqa 3:1", (2, 6, 5, 8), (2, 2, 9, 8), (2, 2, 9, 8)),
    Case("mqa", (1, 4, 3, 8), (1, 1, 9, 8), (1, 1, 9, 4)),
    Case("scale", (2, 4, 8), (2, 6, 8), (2, 6, 8), scale=0.3),
    Case("top_left Lq < Lkv", (2, 2, 5, 8), (2, 2, 9, 8), (2, 2, 9, 8), causal="top_left"),
    Case("top_left Lq > Lkv", (2, 2, 9, 8), (2, 2, 5, 8), (2, 2, 5, 8), causal="top_left"),
    Case("bottom_right Lq < Lkv", (2, 2, 5, 8), (2, 2, 9, 8), (2, 2, 9, 8),
         causal="bottom_right"),
    Case("bottom_right Lq > Lkv (empty rows)", (2, 2, 9, 8), (2, 2, 5, 8), (2, 2, 5, 8),
         causal="bottom_right"),
    Case("causal gqa", (1, 4, 7, 8), (1, 2, 11, 8), (1, 2, 11, 6), causal="bottom_right"),
    Case("bool mask (Lq, Lkv)", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(5, 7),
         mask_kind="bool"),
    Case("bool mask padding (B, 1, 1, Lkv)", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8),
         mask=(2, 1, 1, 7), mask_kind="bool"),
    Case("additive mask (H, Lq, Lkv)", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8),
         mask=(3, 5, 7), mask_kind="additive"),
    Case("additive mask (Lkv,)", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(7,), mask_kind="additive"),
    Case("additive mask (Lq, 1)", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(5, 1),
         mask_kind="additive"),
    Case("bool mask + causal + gqa", (2, 4, 6, 8), (2, 2, 8, 8), (2, 2, 8, 8),
         causal="top_left", mask=(4, 1, 8), mask_kind="bool"),
    Case("tiles + 1", (1, 2, 97, 16), (1, 1, 129, 16), (1, 1, 129, 16), causal="bottom_right"),
    Case("tiles - 1 additive", (1, 1, 95, 8), (1, 1, 127, 8), (1, 1, 127, 8), mask=(95, 127),
         mask_kind="additive"),
    Case("chunked keys", (1, 1, 5, 16), (1, 1, 1100, 16), (1, 1, 1100, 8),
         causal="bottom_right"),
]


def make_inputs(case, dtype, rng):
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in (case.query, case.key, case.value))
    dout = rng.standard_normal(case.query[:-1] + case.value[-1:]).astype(dtype)
    mask = None
    if case.mask_kind == "bool":
        mask = rng.random(case.mask) < 0.7
    elif case.mask_kind == "additive":
        mask = rng.standard_normal(case.mask).astype(dtype)
        mask[rng.random(case.mask) < 0.2] = -np.inf
    return q, k, v, dout, mask


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_against_reference(case, dtype, backend, rng):
    q, k, v, dout, mask = make_inputs(case, dtype, rng)
    options = dict(mask=mask, causal=case.causal, scale=case.scale)
    grads = forward_and_backward(q, k, v, dout, backend=backend, **options)
    for g, x in zip(grads, (q, k, v)):
        assert g.dtype == dtype and g.shape == x.shape
    assert_grads_close(grads, reference_backward(dout, q, k, v, **options))


def random_call(rng):
    """One random valid call: rank 2-4, GQA ratio, lengths from 1 to 40, dims from 1 to 20, a
    causal alignment and a bool or additive mask of rank <= the query's that broadcasts (sizes 1)
    along a random subset of the scores' dims."""
    rank = int(rng.integers(2, 5))
    batch, kv_heads, group = (int(n) for n in rng.integers(1, 4, size=3))
    q_len, kv_len = (int(n) for n in rng.integers(1, 41, size=2))
    head_dim, v_dim = (int(n) for n in rng.integers(1, 21, size=2))
    heads = kv_heads * group if rank >= 3 else 1
    kv_heads = kv_heads if rank >= 3 else 1
    lead_q, lead_kv = (batch, heads)[4 - rank:], (batch, kv_heads)[4 - rank:]
    shapes = (lead_q + (q_len, head_dim), lead_kv + (kv_len, head_dim), lead_kv + (kv_len, v_dim))
    causal = rng.choice([None, "top_left", "bottom_right"])
    mask_kind = rng.choice([None, "bool", "additive"])
    mask = None
    if mask_kind is not None:
        scores = lead_q + (q_len, kv_len)
        mask_rank = int(rng.integers(1, rank + 1))
        mask = tuple(n if rng.random() < 0.5 else 1 for n in scores[rank - mask_rank:])
    return Case("random", *shapes, causal=causal, mask=mask, mask_kind=mask_kind,
                scale=None if rng.random() < 0.7 else float(rng.uniform(0.1, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_shapes(dtype):
    rng = np.random.default_rng(606)
    for _ in range(60):
        case = random_call(rng)
        q, k, v, dout, mask = make_inputs(case, dtype, rng)
        options = dict(mask=mask, causal=case.causal, scale=case.scale)
        try:
            assert_grads_close(forward_and_backward(q, k, v, dout, **options),
                               reference_backward(dout, q, k, v, **options))
        except BaseException:
            print(case)
            raise


def test_finite_differences():
    """∂(Σ grad_out ∘ out)/∂x by central differences of sdpa.attention in float64 equals
    attention_backward, on a small GQA case with a bottom-right causal rule and an additive mask
    (error of the differences: O(h²) truncation + O(eps/h) rounding, about 1e-8 at h = 1e-5)."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 2, 3, 4))
    k = rng.standard_normal((1, 1, 5, 4))
    v = rng.standard_normal((1, 1, 5, 3))
    mask = rng.standard_normal((3, 5))
    mask[0, 1] = -np.inf
    dout = rng.standard_normal((1, 2, 3, 3))
    options = dict(mask=mask, causal="bottom_right")
    grads = forward_and_backward(q, k, v, dout, **options)

    def loss(q, k, v):
        return float(np.sum(dout * sdpa.attention(q, k, v, **options)))

    h = 1e-5
    for index, (x, grad) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for pos in np.ndindex(x.shape):
            args = [q, k, v]
            plus, minus = x.copy(), x.copy()
            plus[pos] += h
            minus[pos] -= h
            args[index] = plus
            f_plus = loss(*args)
            args[index] = minus
            numeric[pos] = (f_plus - loss(*args)) / (2 * h)
        assert_close(grad, numeric, atol=1e-7, rtol=1e-6, what=f"argument {index}")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_with_no_visible_key_give_zero(dtype, backend, rng):
    """Rows that see no key (fully masked by a bool or an all -inf additive mask, or before the
    bottom-right diagonal) have out = 0, lse = -inf and contribute no gradient: their grad_query
    row is exactly 0, and keys no row sees get exactly 0 in grad_key and grad_value. NaN/Inf in
    such keys and values does not leak into any gradient."""
    q = rng.standard_normal((2, 6, 8)).astype(dtype)
    k = rng.standard_normal((2, 5, 8)).astype(dtype)
    v = rng.standard_normal((2, 5, 4)).astype(dtype)
    dout = rng.standard_normal((2, 6, 4)).astype(dtype)
    keep = rng.random((6, 5)) < 0.7
    keep[:, 3] = False  # key 3 is seen by nobody
    keep[1] = False     # query row 1 sees nothing
    bias = np.where(keep, rng.standard_normal((6, 5)), -np.inf).astype(dtype)
    expected = [reference_backward(dout, q, k, v, mask=mask) for mask in (keep, bias)]
    k[:, 3], v[:, 3] = np.nan, np.inf
    for mask, expected_grads in zip((keep, bias), expected):
        grad_q, grad_k, grad_v = forward_and_backward(q, k, v, dout, mask=mask, backend=backend)
        assert np.all(grad_q[:, 1] == 0)
        assert np.all(grad_k[:, 3] == 0) and np.all(grad_v[:, 3] == 0)
        assert_grads_close((grad_q, grad_k, grad_v), expected_grads)

    # bottom_right with Lq > Lkv: query rows 0..2 come before the first key
    k = rng.standard_normal((2, 3, 8)).astype(dtype)
    v = rng.standard_normal((2, 3, 4)).astype(dtype)
    grads = forward_and_backward(q, k, v, dout, causal="bottom_right", backend=backend)
    assert np.all(grads[0][:, :3] == 0)
    assert_grads_close(grads, reference_backward(dout, q, k, v, causal="bottom_right"))


def test_no_keys_and_empty_shapes():
    """kv_len = 0: every row sees nothing (grad_query 0, grad_key/grad_value empty); q_len = 0:
    no row, so every gradient is 0."""
    q, dout = np.ones((2, 3, 4)), np.ones((2, 3, 5))
    k, v = np.ones((2, 0, 4)), np.ones((2, 0, 5))
    grad_q, grad_k, grad_v = forward_and_backward(q, k, v, dout)
    assert np.array_equal(grad_q, np.zeros_like(q))
    assert grad_k.shape == (2, 0, 4) and grad_v.shape == (2, 0, 5)

    q, dout = np.ones((2, 0, 4)), np.ones((2, 0, 5))
    k, v = np.ones((2, 3, 4)), np.ones((2, 3, 5))
    grad_q, grad_k, grad_v = forward_and_backward(q, k, v, dout)
    assert grad_q.shape == (2, 0, 4)
    assert np.array_equal(grad_k, np.zeros_like(k)) and np.array_equal(grad_v, np.zeros_like(v))


def test_large_logits(rng):
    """Scores of about ±1e4 (saturated softmax) give finite gradients equal to the reference's."""
    q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    dout = rng.standard_normal((2, 5, 8))
    grads = forward_and_backward(q, k, v, dout, scale=2e3)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert_grads_close(grads, reference_backward(dout, q, k, v, scale=2e3), atol=1e-9, rtol=1e-9)


def test_strided_views_and_read_only_inputs(rng):
    """q, k, v as strided slices of one packed QKV buffer, out in Fortran order, lse and grad_out
    with negative strides and a broadcast (stride 0) grad_out: the results equal those of
    contiguous copies, and no input changes."""
    batch, seq, heads, dim = 2, 7, 3, 8
    qkv = rng.standard_normal((batch, seq, 3, heads, dim))
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, L, D) views
    out, lse = sdpa.attention(q, k, v, causal="top_left", return_lse=True)
    dout = rng.standard_normal((batch, heads, seq, dim))
    expected = reference_backward(dout, q, k, v, causal="top_left")

    before = qkv.copy()
    qkv.setflags(write=False)
    out_f = np.asfortranarray(out)
    lse_reversed = lse[:, :, ::-1].copy()[:, :, ::-1]  # negative strides, same values
    dout_reversed = dout[:, ::-1].copy()[:, ::-1]
    assert lse_reversed.strides[-1] < 0 and dout_reversed.strides[1] < 0
    grads = sdpa.attention_backward(dout_reversed, q, k, v, out_f, lse_reversed,
                                    causal="top_left")
    assert_grads_close(grads, expected)
    assert np.array_equal(qkv, before)

    # grad_out broadcast from one row (stride 0) and non-contiguous in its last dim
    row = rng.standard_normal(dim)
    dout = np.broadcast_to(row, (batch, heads, seq, dim))
    grads = sdpa.attention_backward(dout, q, k, v, out, lse, causal="top_left")
    assert_grads_close(grads, reference_backward(dout, q, k, v, causal="top_left"))
    v_t = np.ascontiguousarray(v.swapaxes(-1, -2)).swapaxes(-1, -2)  # last dim strided: copied
    grads = sdpa.attention_backward(dout, q, k, v_t, out, lse, causal="top_left")
    assert_grads_close(grads, reference_backward(dout, q, k, v, causal="top_left"))


def test_lists_and_ints_compute_in_float64():
    q, k, v = [[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 2], [3, 4]]
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    grads = sdpa.attention_backward(np.ones((2, 2), dtype=np.int32), q, k, v, out, lse)
    assert all(g.dtype == np.float64 for g in grads)
    assert_grads_close(grads, reference_backward(np.ones((2, 2)), q, k, v))


def test_results_do_not_depend_on_threads(rng):
    """Bitwise identical gradients for 1, 2 and 3 threads (GQA, causal, chunked keys)."""
    q = rng.standard_normal((1, 4, 150, 32)).astype(np.float32)
    k = rng.standard_normal((1, 2, 1100, 32)).astype(np.float32)
    v = rng.standard_normal((1, 2, 1100, 16)).astype(np.float32)
    dout = rng.standard_normal((1, 4, 150, 16)).astype(np.float32)
    out, lse = sdpa.attention(q, k, v, causal="bottom_right", return_lse=True)
    try:
        results = []
        for threads in (1, 2, 3):
            sdpa.set_num_threads(threads)
            results.append(sdpa.attention_backward(dout, q, k, v, out, lse,
                                                   causal="bottom_right"))
    finally:
        sdpa.set_num_threads(0)
    for grads in results[1:]:
        for g, first in zip(grads, results[0]):
            assert np.array_equal(g, first)


def test_calls_from_python_threads(rng):
    """The GIL is released while computing: calls from several threads each get their own
    correct result."""
    inputs = [tuple(rng.standard_normal((2, 30, 8)) for _ in range(4)) for _ in range(4)]
    results = [None] * len(inputs)

    def work(i):
        q, k, v, dout = inputs[i]
        results[i] = forward_and_backward(q, k, v, dout, causal="top_left")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (q, k, v, dout), grads in zip(inputs, results):
        assert_grads_close(grads, reference_backward(dout, q, k, v, causal="top_left"))


def _valid_arguments():
    q, k, v = np.ones((3, 8)), np.ones((5, 8)), np.ones((5, 4))
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    return dict(grad_out=np.ones((3, 4)), query=q, key=k, value=v, out=out, lse=lse)


def _heads(heads, kv_heads, q_len=3):
    return dict(grad_out=np.ones((heads, q_len, 4)), query=np.ones((heads, 3, 8)),
                key=np.ones((kv_heads, 5, 8)), value=np.ones((kv_heads, 5, 4)),
                out=np.ones((heads, 3, 4)), lse=np.ones((heads, 3)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(out=np.ones((3, 5))), ValueError, r"^sdpa: out.shape is \[3, 5\] but must be \[3, 4\]"),
    (dict(out=np.ones(3)), ValueError, r"^sdpa: out has rank 1 but must have rank 2"),
    (dict(lse=np.ones(4)), ValueError, r"^sdpa: lse.shape is \[4\] but must be \[3\]"),
    (dict(lse=np.ones((3, 1))), ValueError, r"^sdpa: lse has rank 2 but must have rank 1"),
    (dict(grad_out=np.ones((4, 4))), ValueError,
     r"^sdpa: grad_out.shape is \[4, 4\] but must be \[3, 4\]"),
    (dict(grad_out=np.ones((1, 1, 1, 3, 4))), ValueError,
     r"^sdpa: grad_out has rank 5 but at most 4 dimensions are supported"),
    (dict(grad_out=[[1, 2], [3]]), ValueError, r"^sdpa: grad_out is not a rectangular array"),
    (dict(out=np.ones((3, 4), np.float32)), TypeError,
     r"^sdpa: out.dtype is float32 but query.dtype is float64"),
    (dict(lse=np.ones(3, np.float32)), TypeError,
     r"^sdpa: lse.dtype is float32 but query.dtype is float64"),
    (dict(grad_out=np.ones((3, 4), np.float32)), TypeError,
     r"^sdpa: grad_out.dtype is float32 but query.dtype is float64"),
    (dict(grad_out=np.ones((3, 4), np.complex64)), TypeError,
     r"^sdpa: grad_out.dtype is complex64 but must be float32, float64, float16 or bfloat16"),
    (dict(lse=np.array(["a", "b", "c"])), TypeError, r"^sdpa: lse.dtype is <U1 but must be"),
    (dict(query=np.ones((3, 8), np.float32)), TypeError,
     r"^sdpa: key.dtype is float64 but query.dtype is float32"),
    (dict(query=np.ones(8)), ValueError, r"^sdpa: query has rank 1 but must have rank 2 \(seq"),
    (dict(key=np.ones((2, 5, 8))), ValueError, r"^sdpa: key has rank 3 but query has rank 2"),
    (dict(key=np.ones((5, 7))), ValueError,
     r"^sdpa: key.shape\[1\] \(head_dim\) is 7 but query.shape\[1\] is 8"),
    (dict(value=np.ones((6, 4))), ValueError,
     r"^sdpa: value.shape\[0\] \(kv_len\) is 6 but key.shape\[0\] is 5"),
    (_heads(6, 4), ValueError,
     r"^sdpa: query.shape\[0\] \(heads\) is 6, which is not a multiple of key.shape\[0\]"),
    (_heads(6, 3, q_len=4), ValueError,
     r"^sdpa: grad_out.shape is \[6, 4, 4\] but must be \[6, 3, 4\]"),
    (dict(mask=np.ones((2, 5), bool)), ValueError,
     r"^sdpa: mask.shape\[0\] is 2 but must be 1 or 3 \(q_len\)"),
    (dict(mask=np.ones((3, 5), np.complex64)), TypeError,
     r"^sdpa: mask.dtype is complex64 but must be bool"),
    (dict(causal="diagonal"), ValueError,
     r"^sdpa: causal is 'diagonal' but must be None, 'top_left' or 'bottom_right'"),
    (dict(causal=True), TypeError, r"^sdpa: causal is True but must be None.*'top_left'"),
    (dict(scale=float("nan")), ValueError, r"^sdpa: scale is nan but must be finite"),
    (dict(scale="big"), TypeError, r"^sdpa: scale is 'big' but must be a real number or None"),
    (dict(backend="gpu"), ValueError, r"^sdpa: backend is 'gpu' but must be None, 'auto'"),
    (dict(backend=1), TypeError, r"^sdpa: backend is 1 but must be None"),
])
def test_errors(kwargs, error, match):
    args = _valid_arguments()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sdpa.attention_backward(**args)


def test_an_error_leaves_the_module_usable(rng):
    args = _valid_arguments()
    with pytest.raises(ValueError):
        sdpa.attention_backward(**dict(args, lse=np.ones(4)))
    grads = sdpa.attention_backward(**args)
    assert_grads_close(grads, reference_backward(args["grad_out"], args["query"], args["key"],
                                                 args["value"]))
