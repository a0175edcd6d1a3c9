"""The float64 numpy reference that every test compares with, and a comparison that reports the
first mismatches with their index. (A module of its own, not conftest.py, so that importing it
cannot pick up another test folder's conftest.)"""

import numpy as np
import pytest


def reference_attention(query, key, value, mask=None, causal=None, scale=None, gqa=False):
    """(out, lse) in float64: the textbook algorithm with PyTorch's broadcasting.

    query (..., L, E), key (..., S, E), value (..., S, Ev); batch dims broadcast (numpy matmul);
    gqa repeats key/value heads (dim -3) like torch.repeat_interleave. mask: bool (True = attend)
    or float (added). causal: None, "top_left" (j <= i) or "bottom_right" (j <= i + S - L).
    A row with no visible key gives out = 0 and lse = -inf.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (query, key, value))
    if gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
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
    scores = np.where(visible, scores, -np.inf)
    # pass 2: row max (0 for rows with no visible key, so that exp gives 0, not NaN)
    if kv_len:
        m = scores.max(axis=-1, keepdims=True)
    else:
        m = np.full(scores.shape[:-1] + (1,), -np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    # pass 3: exp and sum; pass 4: normalise
    p = np.exp(scores - m)
    l = p.sum(axis=-1, keepdims=True)
    out = (p @ v) / np.where(l > 0, l, 1.0)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]
    return out, lse


# |x - ref| <= atol + rtol * |ref|. float32: a few float32 roundings of O(1) values over short
# rows (the plain float32 algorithm stays below 1e-6 at these sizes); float64: the reference
# accumulates in float64 like the library.
TOLERANCE = {np.dtype(np.float32): (2e-5, 2e-5), np.dtype(np.float64): (1e-12, 1e-12)}


def assert_close(actual, expected, atol=None, rtol=None, what="out"):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    default_atol, default_rtol = TOLERANCE.get(actual.dtype, (1e-12, 1e-12))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    same_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    with np.errstate(invalid="ignore"):
        bad = ~same_inf & ~(np.abs(a - e) <= atol + rtol * np.abs(e))
    if bad.any():
        first = np.argwhere(bad)[:5]
        lines = [f"  {what}[{', '.join(map(str, idx))}] = {a[tuple(idx)]!r}, "
                 f"expected {e[tuple(idx)]!r}" for idx in first]
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} elements differ "
                    f"(atol {atol}, rtol {rtol}); first:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# The attention variants of issue 7 (window, ALiBi, softcap, sinks, packed varlen, dropout),
# written from their definitions in include/sdpa/options.h and src/core/dropout.h, dense and in
# float64. Each score goes through
#   s = scale·q·k → softcap c·tanh(s/c) → + ALiBi −slope[h]·|i + Lk − Lq − j| → + additive mask
#   → removed outside causal / window / its sequence / the bool mask
#   → softmax whose denominator includes exp(sink[h]) → dropout (Philox4x32-10) → · V,
# with i, j, Lq, Lk positions and lengths within the sequence (packed varlen) or the batch entry.

_MASK32 = np.uint64(0xFFFFFFFF)
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(counter, key):
    """Random123's philox4x32_R(10, counter, key) on arrays: counter is 4 broadcastable arrays of
    uint32 words, key 2 Python ints; returns the 4 output words as uint32 arrays.

    One round (Salmon et al., SC'11): with (hi, lo)(a·b) the 64-bit product's halves,
      (c0, c1, c2, c3) → (hi(M1·c2) ^ c1 ^ k0, lo(M1·c2), hi(M0·c0) ^ c3 ^ k1, lo(M0·c0)),
    then the key is bumped by the Weyl constants (mod 2^32)."""
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) for c in counter))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = _PHILOX_M[0] * c0, _PHILOX_M[1] * c2  # < 2^64: exact in uint64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK32)
        k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def dropout_kept(p, seed, b, h, i, j):
    """True where element (b, h, i, j) survives dropout with probability p and `seed`: the word
    Philox(counter = (j >> 2, i, h, b), key = (seed & 0xffffffff, seed >> 32))[j & 3] is
    >= round(p·2^32) (half away from zero, as C's llround). Arguments broadcast."""
    b, h, i, j = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (b, h, i, j)))
    words = philox4x32_10((j >> 2, i, h, b), (seed & 0xFFFFFFFF, seed >> 32))
    word = np.choose(j & 3, words)
    threshold = int(np.floor(p * 2.0**32 + 0.5))
    return word.astype(np.uint64) >= np.uint64(threshold)


def _as_rank4(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _variant_state(query, key, value, mask=None, causal=None, scale=None, window=None,
                   alibi_slopes=None, softcap=None, sinks=None, cu_seqlens_q=None,
                   cu_seqlens_k=None, dropout_p=0.0, seed=0):
    """Everything both passes need, dense over (B, H, Lq, Lk) in float64.

    query (.., H, Lq, D), key (.., Hkv, Lk, D), value (.., Hkv, Lk, Dv) of rank 2-4, H % Hkv == 0
    (query head h reads kv head h // (H // Hkv)); mask broadcastable to (B, H, Lq, Lk), bool
    (True = attend) or float (added); with cu_seqlens batch is 1 and the mask is indexed by packed
    positions."""
    q, k, v = _as_rank4(query), _as_rank4(key), _as_rank4(value)
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads if kv_heads else 1
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim) if head_dim else 1.0

    # Where each row and key lives: sequence, position within it, and Lk − Lq of its sequence.
    if cu_seqlens_q is not None:
        cu_q, cu_k = np.asarray(cu_seqlens_q, np.int64), np.asarray(cu_seqlens_k, np.int64)
        seq_q = np.searchsorted(cu_q, np.arange(q_len), side="right") - 1
        seq_k = np.searchsorted(cu_k, np.arange(kv_len), side="right") - 1
        pos_q, pos_k = np.arange(q_len) - cu_q[seq_q], np.arange(kv_len) - cu_k[seq_k]
        offset = (np.diff(cu_k) - np.diff(cu_q))[seq_q]
        same_seq = seq_q[:, None] == seq_k[None, :]
        dropout_b = seq_q[None, None, :, None]  # the sequence is dropout's "batch" word
    else:
        pos_q, pos_k = np.arange(q_len), np.arange(kv_len)
        offset = np.full(q_len, kv_len - q_len)
        same_seq = np.ones((q_len, kv_len), dtype=bool)
        dropout_b = np.arange(batch)[:, None, None, None]
    i, j, offset = pos_q[:, None], pos_k[None, :], offset[:, None]

    # pass 1: which keys each row sees (before any value is read)
    visible = same_seq.copy()
    if causal == "top_left":
        visible &= j <= i
    elif causal == "bottom_right":
        visible &= j <= i + offset
    if window is not None:
        diag = i if causal == "top_left" else i + offset
        reach = q_len + kv_len  # a wider side reaches every key: int64 arithmetic stays exact
        if window[0] is not None:
            visible &= j >= diag - min(window[0], reach)
        if window[1] is not None:
            visible &= j <= diag + min(window[1], reach)
    visible = np.broadcast_to(visible, (batch, heads, q_len, kv_len)).copy()
    bias = np.zeros((batch, heads, q_len, kv_len))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            visible &= mask
        else:
            bias = bias + mask.astype(np.float64)
            visible &= bias != -np.inf

    # pass 2: scores s = softcap(scale·q·k) + ALiBi + mask, -inf where not visible
    with np.errstate(invalid="ignore", over="ignore"):
        k_visible = np.where(visible[..., None], k[:, :, None], 0.0)  # NaN-safe
        raw = scale * np.einsum("bhid,bhijd->bhij", q, k_visible)
    tanh = None
    if softcap is not None:
        tanh = np.tanh(raw / softcap)
        raw = softcap * tanh
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, np.float64)[None, :, None, None]
        raw = raw - slopes * np.abs(i + offset - j)
    scores = np.where(visible, raw + np.where(visible, bias, 0.0), -np.inf)

    # pass 3: softmax with the sink in the denominator; lse includes the sink
    sink = np.full(heads, -np.inf) if sinks is None else np.asarray(sinks, np.float64)
    sink = np.broadcast_to(sink[None, :, None, None], (batch, heads, q_len, 1))
    m = np.maximum(scores.max(axis=-1, keepdims=True, initial=-np.inf), sink)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(scores - m_safe)
    l = p.sum(axis=-1, keepdims=True) + np.exp(sink - m_safe)
    p = p / np.where(l > 0, l, 1.0)
    with np.errstate(divide="ignore"):
        lse = np.where(l > 0, m_safe + np.log(np.where(l > 0, l, 1.0)), -np.inf)
    p_sink = np.where(l > 0, np.exp(sink - m_safe) / np.where(l > 0, l, 1.0), 0.0)

    # pass 4: dropout factors, 1 / (1 - p) where kept and 0 where dropped
    factor = np.ones_like(p)
    if dropout_p > 0:
        kept = dropout_kept(dropout_p, seed, dropout_b, np.arange(heads)[None, :, None, None],
                            i[None, None], j[None, None])
        factor = np.where(kept, 1.0 / (1.0 - dropout_p), 0.0)
    return dict(q=q, k=k, v=v, visible=visible, p=p, p_sink=p_sink[..., 0], lse=lse[..., 0],
                factor=factor, scale=scale, softcap_tanh=tanh, group=group,
                kv_heads=kv_heads, shapes=(np.shape(query), np.shape(key), np.shape(value)))


def variant_attention(query, key, value, **options):
    """(out, lse) in float64 with every variant of options.h; see _variant_state for the
    arguments. A row with no visible key gives out = 0 and lse = its sink (-inf without one)."""
    st = _variant_state(query, key, value, **options)
    v_visible = np.where(st["visible"][..., None], st["v"][:, :, None], 0.0)  # NaN-safe
    out = np.einsum("bhij,bhijd->bhid", st["p"] * st["factor"], v_visible)
    q_shape = st["shapes"][0]
    return (out.reshape(q_shape[:-1] + out.shape[-1:]), st["lse"].reshape(q_shape[:-1]))


def variant_backward(grad_out, query, key, value, **options):
    """(grad_query, grad_key, grad_value, grad_sinks) in float64; grad_sinks is None without
    sinks. With P the softmax (sink included), F the dropout factors, O = (P∘F) V:
      dV = (P∘F)ᵀ dO;  dP = F ∘ (dO Vᵀ);  Δ = rowsum(P ∘ dP) = rowsum(dO ∘ O);
      dS = P ∘ (dP − Δ), times 1 − tanh²(s/c) under softcap;  dQ = scale·dS K;  dK = scale·dSᵀ Q;
      d sink[h] = −Σ_rows P_sink · Δ  (P_sink = exp(sink − lse))
    and with GQA dK, dV are summed over the query heads of each kv head."""
    st = _variant_state(query, key, value, **options)
    q, visible, p, factor = st["q"], st["visible"], st["p"], st["factor"]
    dout = _as_rank4(grad_out)
    v_visible = np.where(visible[..., None], st["v"][:, :, None], 0.0)
    k_visible = np.where(visible[..., None], st["k"][:, :, None], 0.0)
    grad_v = np.einsum("bhij,bhid->bhjd", p * factor, dout)
    grad_p = factor * np.einsum("bhid,bhijd->bhij", dout, v_visible)
    delta = (p * grad_p).sum(axis=-1, keepdims=True)
    grad_s = p * (grad_p - delta)
    if st["softcap_tanh"] is not None:
        grad_s = grad_s * np.where(visible, 1.0 - st["softcap_tanh"] ** 2, 0.0)
    grad_q = st["scale"] * np.einsum("bhij,bhijd->bhid", grad_s, k_visible)
    grad_k = st["scale"] * np.einsum("bhij,bhid->bhjd", grad_s, q)
    batch, heads = q.shape[:2]
    group, kv_heads = st["group"], st["kv_heads"]
    grad_k = grad_k.reshape((batch, kv_heads, group) + grad_k.shape[2:]).sum(2)
    grad_v = grad_v.reshape((batch, kv_heads, group) + grad_v.shape[2:]).sum(2)
    grad_sinks = None
    if options.get("sinks") is not None:
        grad_sinks = -(st["p_sink"] * delta[..., 0]).sum(axis=(0, 2))
    q_shape, k_shape, v_shape = st["shapes"]
    return (grad_q.reshape(q_shape), grad_k.reshape(k_shape), grad_v.reshape(v_shape),
            grad_sinks)
