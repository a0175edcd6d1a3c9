"""Broadcast masks reach the library as views (issue 19 item 8): a mask broadcast over batch and
heads (stride 0, e.g. np.broadcast_to(m2d, (B, H, L, L)), or a 2-D mask for 4-D inputs) is never
materialised at full size, also when its dtype is converted (a float32 or int mask for a float64
query) or its layout is copied: only its distinct values are, and the stride-0 dims stay stride 0.
Results are those of the same mask made dense.

Checks: the array handed to the extension (options.mask of the _sdpa.forward call, captured by a
monkeypatched forward) shares memory with the caller's mask or keeps its stride-0 dims, and
tracemalloc's peak over the call stays far below the dense mask's size."""

import tracemalloc

import numpy as np
import pytest

import sdpa
from sdpa import _sdpa

B, H, KV_H, L = 2, 4, 2, 256
DENSE_BYTES = B * H * L * L * 8  # a dense float64 mask: 4 MiB


def operands(gqa, dtype=np.float64):
    rng = np.random.default_rng(8)
    q = rng.standard_normal((B, H, L, 16)).astype(dtype)
    kv_heads = KV_H if gqa else H
    k = rng.standard_normal((B, kv_heads, L, 16)).astype(dtype)
    v = rng.standard_normal((B, kv_heads, L, 8)).astype(dtype)
    return q, k, v


def mask_2d(kind):
    rng = np.random.default_rng(9)
    keep = np.tril(np.ones((L, L), dtype=bool)) | (rng.random((L, L)) < 0.1)
    if kind == "bool":
        return keep
    if kind == "int8":
        return np.where(keep, 0, -100).astype(np.int8)
    return np.where(keep, 0.0, -np.inf).astype(kind)


def broadcast(m2d, rank):
    """The mask as the caller passes it: (L, L), (1, L, L) or np.broadcast_to (B, H, L, L)."""
    if rank == 2:
        return m2d
    if rank == 3:
        return m2d[None]
    return np.broadcast_to(m2d, (B, H, L, L))


class Capture:
    """Replaces _sdpa.forward; remembers the options.mask of each call."""

    def __init__(self, monkeypatch):
        self.masks = []
        forward = _sdpa.forward

        def capture(query, key, value, options, return_lse):
            self.masks.append(options.mask)
            return forward(query, key, value, options, return_lse)

        monkeypatch.setattr(_sdpa, "forward", capture)


def peak_bytes(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_not_dense(mask, source):
    """`mask`'s broadcast dims (size > 1 where `source` has none) have stride 0, and it reads
    `source`'s memory unless its dtype differs."""
    if mask.dtype == source.dtype:
        assert np.shares_memory(mask, source)
    for d in range(mask.ndim - 2):
        if mask.shape[d] > 1:
            assert mask.strides[d] == 0, (mask.shape, mask.strides)


@pytest.mark.parametrize("function", ["attention", "scaled_dot_product_attention"])
@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("kind", ["bool", "float64", "float32", "int8"])
def test_broadcast_mask_is_not_copied_dense(kind, rank, gqa, function, monkeypatch):
    q, k, v = operands(gqa)
    m2d = mask_2d(kind)
    mask = broadcast(m2d, rank)
    if function == "attention":
        def call(m):
            return sdpa.attention(q, k, v, mask=m)
    else:
        def call(m):
            return sdpa.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)
    dense = np.ascontiguousarray(np.broadcast_to(mask, (B, H, L, L)))
    expected = call(dense)

    capture = Capture(monkeypatch)
    out, peak = peak_bytes(lambda: call(mask))
    assert np.array_equal(out, expected)
    assert peak < DENSE_BYTES / 4, f"{peak} bytes traced for a {DENSE_BYTES}-byte dense mask"
    handed = capture.masks[-1]
    assert handed.dtype in (np.bool_, np.float64)
    assert_not_dense(handed, m2d)


@pytest.mark.parametrize("kind", ["bool", "float32", "int8"])
def test_backward_takes_the_view(kind, monkeypatch):
    q, k, v = operands(gqa=True)
    mask = broadcast(mask_2d(kind), 4)
    dense = np.ascontiguousarray(mask)
    out, lse = sdpa.attention(q, k, v, mask=mask, return_lse=True)
    expected = sdpa.attention_backward(out, q, k, v, out, lse, mask=dense)
    grads, peak = peak_bytes(lambda: sdpa.attention_backward(out, q, k, v, out, lse, mask=mask))
    for g, e in zip(grads, expected):
        assert np.array_equal(g, e)
    assert peak < DENSE_BYTES / 4


def test_more_batch_dims_copy_only_what_varies(monkeypatch):
    """Five batch dims are merged into two for the library. A mask that varies in one batch dim
    and broadcasts over the others is copied (no single stride expresses the merged dim) but only
    over the merged group it varies in, not over every batch index."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 4, 32, 8))
    k = rng.standard_normal((2, 3, 4, 32, 8))[..., ::1]
    v = rng.standard_normal((2, 3, 4, 32, 8))
    mask = np.broadcast_to(rng.random((3, 1, 32, 32)) < 0.8, (2, 3, 4, 32, 32))
    capture = Capture(monkeypatch)
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    handed = capture.masks[-1]
    assert np.array_equal(out, sdpa.scaled_dot_product_attention(
        q, k, v, attn_mask=np.ascontiguousarray(mask)))
    assert handed.ndim == 4
    distinct = handed[tuple(slice(0, 1) if s == 0 else slice(None) for s in handed.strides)]
    assert distinct.size <= 2 * 3 * 32 * 32  # the dense mask has 2 * 3 * 4 * 32 * 32


def test_a_strided_broadcast_mask_is_read_in_place(monkeypatch):
    """A mask whose last dim is strided and which broadcasts over batch and heads: the library
    reads it as it is, stride 0 included."""
    q, k, v = operands(gqa=False)
    wide = mask_2d("float64")
    mask = np.broadcast_to(np.repeat(wide, 2, axis=1)[:, ::2], (B, H, L, L))
    expected = sdpa.attention(q, k, v, mask=np.ascontiguousarray(mask))
    capture = Capture(monkeypatch)
    out, peak = peak_bytes(lambda: sdpa.attention(q, k, v, mask=mask))
    assert np.array_equal(out, expected)
    assert peak < DENSE_BYTES / 4
    assert capture.masks[-1] is mask


@pytest.mark.parametrize("kind", ["bool", "float32", "int8"])
def test_wrong_broadcast_shape_is_a_value_error(kind):
    """A broadcast mask of a wrong, huge shape: converting it used to allocate it at full size
    (MemoryError, or numpy's "iterator is too large"); now it is the shape error, naming the
    argument."""
    q, k, v = operands(gqa=False)
    m2d = mask_2d(kind)
    huge = np.broadcast_to(m2d, (10**6, 10**5, L, L))
    with pytest.raises(ValueError, match=r"^sdpa: mask.shape\[0\] is 1000000 but must be 1 or 2 "
                                         r"\(batch\)"):
        sdpa.attention(q, k, v, mask=huge)
    with pytest.raises(ValueError, match=r"^sdpa: attn_mask.shape\[0\] is 1000000 but must be 1 "
                                         r"or 2 to broadcast"):
        sdpa.scaled_dot_product_attention(q, k, v, attn_mask=huge)
    q5 = q[None]
    with pytest.raises(ValueError, match=r"^sdpa: attn_mask.shape\[1\] is 1000000 but must be 1 "
                                         r"or 2 to broadcast"):
        sdpa.scaled_dot_product_attention(q5, q5, q5, attn_mask=huge[None])


def test_broadcast_operands_are_converted_small():
    """The same rule for query/key/value: an int or byte-swapped key broadcast over the batch is
    converted without materialising the batch."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((64, 4, L, 16))
    k_one = rng.integers(-3, 3, (1, 4, L, 16))
    k = np.broadcast_to(k_one, q.shape)
    v = np.broadcast_to(rng.standard_normal((1, 4, L, 16)).astype(">f8"), q.shape)
    dense = sdpa.attention(q, np.ascontiguousarray(k, np.float64), np.ascontiguousarray(v, "<f8"))
    out, peak = peak_bytes(lambda: sdpa.attention(q, k, v))
    assert np.array_equal(out, dense)
    assert peak < q.nbytes / 8
