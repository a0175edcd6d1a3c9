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
