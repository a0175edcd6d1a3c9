"""sdpa.scaled_dot_product_attention: PyTorch's semantics on numpy arrays, against the float64
numpy reference in conftest.py."""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close, reference_attention


@dataclass
class Case:
    name: str
    query: Tuple[int, ...]
    key: Tuple[int, ...]
    value: Tuple[int, ...]
    mask: Optional[Tuple[int, ...]] = None
    mask_kind: str = "bool"  # "bool" or "float" (with some -inf entries)
    is_causal: bool = False
    gqa: bool = False
    scale: Optional[float] = None
    dtype: type = np.float32
    atol: Optional[float] = None  # default: conftest.TOLERANCE of the dtype
    rtol: Optional[float] = None


CASES = [
    Case("2d", (5, 8), (7, 8), (7, 3)),
    Case("2d f64", (5, 8), (7, 8), (7, 3), dtype=np.float64),
    Case("sizes 1", (1, 1), (1, 1), (1, 1)),
    Case("3d odd head dim", (2, 17, 13), (2, 3, 13), (2, 3, 5)),
    Case("4d", (2, 3, 17, 16), (2, 3, 19, 16), (2, 3, 19, 16)),
    Case("4d f64 dv != d", (2, 3, 6, 7), (2, 3, 9, 7), (2, 3, 9, 2), dtype=np.float64),
    Case("5d", (2, 2, 3, 4, 8), (2, 2, 3, 5, 8), (2, 2, 3, 5, 8)),
    Case("6d", (2, 1, 2, 2, 3, 4), (2, 1, 2, 2, 5, 4), (2, 1, 2, 2, 5, 4), dtype=np.float64),
    Case("key batch broadcast", (3, 4, 8), (1, 6, 8), (3, 6, 8)),
    Case("query batch broadcast", (1, 4, 8), (3, 6, 8), (3, 6, 8)),
    Case("ranks differ", (2, 3, 4, 8), (6, 8), (3, 6, 5)),
    Case("5d broadcast", (2, 1, 2, 3, 4), (1, 3, 2, 5, 4), (2, 3, 1, 5, 6)),
    Case("kv heads 1 broadcast", (2, 4, 3, 8), (2, 1, 5, 8), (2, 1, 5, 8)),
    Case("scale", (2, 5, 8), (2, 7, 8), (2, 7, 8), scale=0.3),
    Case("scale 0", (5, 8), (7, 8), (7, 8), scale=0.0, dtype=np.float64),
    Case("causal square", (2, 2, 9, 8), (2, 2, 9, 8), (2, 2, 9, 8), is_causal=True),
    Case("causal Lq < Lkv", (2, 4, 8), (2, 9, 8), (2, 9, 8), is_causal=True),
    Case("causal Lq > Lkv", (2, 9, 8), (2, 4, 8), (2, 4, 8), is_causal=True),
    Case("causal 5d", (2, 1, 2, 3, 4), (1, 3, 2, 5, 4), (2, 3, 1, 5, 6), is_causal=True),
    Case("gqa", (2, 8, 5, 16), (2, 2, 7, 16), (2, 2, 7, 16), gqa=True),
    Case("mqa", (2, 6, 5, 16), (2, 1, 7, 16), (2, 1, 7, 16), gqa=True),
    Case("gqa 3d", (4, 5, 8), (2, 7, 8), (2, 7, 8), gqa=True),
    Case("gqa equal heads", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), gqa=True),
    Case("gqa kv heads differ", (1, 6, 3, 4), (1, 3, 5, 4), (1, 2, 5, 6), gqa=True),
    Case("gqa 5d broadcast", (2, 3, 4, 3, 4), (1, 3, 2, 5, 4), (2, 1, 2, 5, 4), gqa=True),
    Case("gqa causal", (2, 4, 6, 8), (2, 2, 6, 8), (2, 2, 6, 8), gqa=True, is_causal=True),
    Case("mask (L, S)", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(5, 7)),
    Case("mask (S,)", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(7,)),
    Case("mask (L, 1)", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(5, 1), mask_kind="float"),
    Case("mask (1, S)", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(1, 7)),
    Case("mask 0-d", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(), mask_kind="float"),
    Case("mask per head", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(3, 5, 7)),
    Case("mask per batch", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(2, 1, 5, 7),
         mask_kind="float"),
    Case("mask full", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(2, 3, 5, 7),
         dtype=np.float64),
    Case("mask float f64", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(3, 1, 7),
         mask_kind="float", dtype=np.float64),
    Case("mask 5d", (2, 2, 3, 4, 8), (2, 2, 3, 5, 8), (2, 2, 3, 5, 8), mask=(2, 1, 3, 4, 5)),
    Case("mask 5d float", (2, 2, 3, 4, 8), (2, 2, 3, 5, 8), (2, 2, 3, 5, 8), mask=(3, 1, 5),
         mask_kind="float"),
    Case("mask gqa", (2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), mask=(4, 5, 7), gqa=True),
    Case("mask, value adds batch", (3, 1, 5, 8), (1, 2, 7, 8), (4, 1, 1, 7, 8), mask=(3, 2, 5, 7),
         mask_kind="float"),
    Case("empty L", (2, 0, 8), (2, 7, 8), (2, 7, 8)),
    Case("empty S", (2, 5, 8), (2, 0, 8), (2, 0, 3)),
    Case("empty batch", (0, 5, 8), (1, 7, 8), (1, 7, 8)),
    Case("empty batch 5d", (2, 0, 3, 5, 8), (2, 1, 3, 7, 8), (2, 1, 3, 7, 8)),
]


def make_mask(rng, case):
    if case.mask is None:
        return None
    if case.mask_kind == "bool":
        return rng.random(case.mask) < 0.7
    mask = rng.standard_normal(case.mask).astype(case.dtype)
    mask[rng.random(case.mask) < 0.2] = -np.inf
    return mask


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_against_reference(case, rng):
    q = rng.standard_normal(case.query).astype(case.dtype)
    k = rng.standard_normal(case.key).astype(case.dtype)
    v = rng.standard_normal(case.value).astype(case.dtype)
    mask = make_mask(rng, case)
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=case.is_causal,
                                            scale=case.scale, enable_gqa=case.gqa)
    expected, _ = reference_attention(q, k, v, mask, "top_left" if case.is_causal else None,
                                      case.scale, case.gqa)
    assert out.dtype == case.dtype
    assert_close(out, expected, case.atol, case.rtol)


def test_fully_masked_rows_are_zero(rng):
    q, k, v = (rng.standard_normal(shape) for shape in ((2, 4, 3), (2, 6, 3), (2, 6, 5)))
    mask = np.ones((4, 6), dtype=bool)
    mask[1] = False
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.all(out[:, 1] == 0)
    additive = np.where(mask, 0.0, -np.inf)
    assert_close(sdpa.scaled_dot_product_attention(q, k, v, attn_mask=additive), out)


def test_causal_is_top_left(rng):
    """Lq > Lkv: query i sees keys 0..min(i, Lkv - 1); all rows have a key."""
    q, k, v = rng.standard_normal((6, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    out = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(out[0], v[0])  # query 0 sees key 0 only
    assert_close(out[3:], sdpa.scaled_dot_product_attention(q[3:], k, v))  # rows 3.. see all
    explicit = np.tril(np.ones((6, 3), dtype=bool))
    assert_close(out, sdpa.scaled_dot_product_attention(q, k, v, attn_mask=explicit))


def test_logits_of_large_magnitude_do_not_overflow(rng):
    q = rng.standard_normal((5, 8)).astype(np.float32) * 100
    k = rng.standard_normal((7, 8)).astype(np.float32) * 100  # scores around +-1e4
    v = rng.standard_normal((7, 4)).astype(np.float32)
    out = sdpa.scaled_dot_product_attention(q, k, v)
    assert np.all(np.isfinite(out))
    assert_close(out, reference_attention(q, k, v)[0], atol=1e-4, rtol=1e-4)


# --- layouts: views, strides, Fortran order, read-only and DLPack-free objects ---------------


def test_packed_qkv_views_are_read_in_place(rng):
    """Q, K and V as strided slices of one (B, L, 3, H, D) buffer, as a fused QKV projection
    writes them: no copy is made (checked on the operands handed to the library)."""
    from sdpa import _arrays, _broadcast

    packed = rng.standard_normal((2, 5, 3, 4, 8)).astype(np.float32)
    q, k, v = (packed[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, L, D) views
    before = packed.copy()
    out = sdpa.scaled_dot_product_attention(q, k, v)
    assert_close(out, reference_attention(q, k, v)[0])
    assert np.array_equal(packed, before)
    operands = _broadcast.to_engine(*(_arrays.as_operand(n, a) for n, a in
                                      (("query", q), ("key", k), ("value", v))), None, False)
    for operand in operands[:3]:
        assert np.shares_memory(operand, packed)


def test_many_batch_dims_merge_without_copies(rng):
    """Five batch dims, some broadcast, become (batch, heads) views when one split suits every
    operand: here after dim 2, since key and the mask vary only in the last three."""
    from sdpa import _broadcast

    q = rng.standard_normal((2, 3, 2, 2, 2, 4, 8))
    k = rng.standard_normal((1, 1, 2, 2, 2, 5, 8))
    v = rng.standard_normal((2, 3, 2, 2, 2, 5, 8))[..., ::1]
    mask = rng.random((2, 2, 2, 4, 5)) < 0.8
    eq, ek, ev, em, out_shape = _broadcast.to_engine(q, k, v, mask, False)
    assert out_shape == (2, 3, 2, 2, 2, 4, 8)
    for operand, source in ((eq, q), (ek, k), (ev, v), (em, mask)):
        assert operand.shape[:2] == (6, 8)
        assert np.shares_memory(operand, source)
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(out, reference_attention(q, k, v, mask)[0])


def test_many_batch_dims_copy_when_no_split_suits(rng):
    """key varies in dims 1-2 and broadcasts over 0, 3 and 4: no two strided dims express that,
    so key is copied; the result is the same."""
    q = rng.standard_normal((2, 3, 2, 2, 2, 4, 8))
    k = rng.standard_normal((1, 3, 2, 1, 1, 5, 8))
    v = rng.standard_normal((2, 1, 1, 2, 1, 5, 8))
    out = sdpa.scaled_dot_product_attention(q, k, v)
    assert_close(out, reference_attention(q, k, v)[0])


@pytest.mark.parametrize("layout", ["fortran", "last dim strided", "negative strides",
                                    "transposed heads", "broadcast view", "unaligned"])
def test_any_layout(layout, rng):
    q, k, v = (rng.standard_normal((2, 3, 5, 8)) for _ in range(3))
    expected = reference_attention(q, k, v)[0]
    if layout == "fortran":
        q, k, v = (np.asfortranarray(a) for a in (q, k, v))
    elif layout == "last dim strided":
        wide = np.repeat(k, 2, axis=-1)
        k = wide[..., ::2]
    elif layout == "negative strides":
        k, v = k[:, :, ::-1][:, :, ::-1], v[::-1][::-1]
    elif layout == "transposed heads":
        q = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    elif layout == "broadcast view":
        k = np.broadcast_to(k[:1], k.shape)
        v = np.broadcast_to(v[:1], v.shape)
        expected = reference_attention(q, k, v)[0]
    elif layout == "unaligned":
        q = _unaligned_copy(q)
    assert_close(sdpa.scaled_dot_product_attention(q, k, v), expected)


def _unaligned_copy(a):
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = np.frombuffer(raw.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_read_only_inputs_are_accepted_and_unchanged(rng):
    q, k, v = (rng.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(3))
    mask = rng.random((5, 5)) < 0.5
    copies = [a.copy() for a in (q, k, v, mask)]
    for a in (q, k, v, mask):
        a.setflags(write=False)
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for a, c in zip((q, k, v, mask), copies):
        assert np.array_equal(a, c)
    out[...] = 0  # the result is the caller's own, writable memory
    assert out.flags.writeable and out.flags.c_contiguous


def test_result_owns_its_memory(rng):
    q = rng.standard_normal((3, 4))
    out = sdpa.scaled_dot_product_attention(q, q, q)
    expected = out.copy()
    del q
    import gc
    gc.collect()
    assert not np.shares_memory(out, expected)
    assert np.array_equal(out, expected)


# --- dtypes -----------------------------------------------------------------------------------


def test_dtypes_in_and_out():
    ones = np.ones((3, 4))
    for dtype, expected in ((np.float32, np.float32), (np.float64, np.float64),
                            (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64),
                            (bool, np.float64)):
        a = ones.astype(dtype)
        assert sdpa.scaled_dot_product_attention(a, a, a).dtype == expected, dtype
    assert sdpa.scaled_dot_product_attention([[1, 2]], [[1, 2]], [[3, 4]]).dtype == np.float64
    big_endian = ones.astype(">f4")
    assert sdpa.scaled_dot_product_attention(big_endian, ones.astype(np.float32),
                                             ones.astype(np.float32)).dtype == np.float32


def test_mask_dtypes(rng):
    q = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal((3, 3))
    expected = reference_attention(q, q, q, bias)[0]
    q64 = q.astype(np.float64)
    # a float32 mask is widened for a float64 query (PyTorch accepts it too)
    assert_close(sdpa.scaled_dot_product_attention(q64, q64, q64, bias.astype(np.float32)),
                 reference_attention(q, q, q, bias.astype(np.float32))[0])
    # a float64 mask on a float32 query is read as it is (the library takes any float mask)
    out = sdpa.scaled_dot_product_attention(q, q, q, bias)
    assert out.dtype == np.float32
    assert_close(out, expected)
    # lists and ints take the query's dtype
    assert_close(sdpa.scaled_dot_product_attention(q, q, q, bias.tolist()), expected)
    ints = np.array([[0, -1, 2], [1, 0, 0], [-3, 0, 1]])
    assert_close(sdpa.scaled_dot_product_attention(q, q, q, ints),
                 reference_attention(q, q, q, ints)[0])
    # bools stay bools: True = attend
    keep = [[True, False, True], [True, True, True], [False, False, True]]
    assert_close(sdpa.scaled_dot_product_attention(q, q, q, keep),
                 reference_attention(q, q, q, np.array(keep))[0])


# --- errors: every message names the argument, the expected and the actual value -------------

Q4 = np.ones((2, 4, 3, 8))
KV2 = np.ones((2, 2, 5, 8))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dropout_p=1.5), ValueError, r"^sdpa: dropout_p is 1.5 but must be in \[0, 1\]"),
    (dict(dropout_p=0.1, seed=-1), ValueError, r"^sdpa: seed is -1 but must be in \[0, 2\*\*64\)"),
    (dict(attn_mask=np.ones((3, 2), bool), is_causal=True), ValueError,
     r"^sdpa: attn_mask is given and is_causal is True; PyTorch refuses"),
    (dict(query=np.ones(8)), ValueError, r"^sdpa: query has rank 1 but must have rank >= 2"),
    (dict(value=np.float64(1.0)), ValueError, r"^sdpa: value has rank 0 but must have rank >= 2"),
    (dict(key=np.ones((3, 7))), ValueError,
     r"^sdpa: key.shape\[1\] \(head_dim\) is 7 but query.shape\[1\] is 8"),
    (dict(value=np.ones((4, 8))), ValueError,
     r"^sdpa: value.shape\[0\] \(kv_len\) is 4 but key.shape\[0\] is 2"),
    (dict(query=np.ones((2, 3, 8)), key=np.ones((3, 2, 8)), value=np.ones((3, 2, 8))), ValueError,
     r"^sdpa: key.shape\[0\] is 3 but query.shape\[0\] is 2; batch dimensions must be equal or 1"),
    (dict(query=Q4, key=KV2, value=KV2), ValueError,
     r"^sdpa: key.shape\[1\] is 2 but query.shape\[1\] is 4; .*pass enable_gqa=True"),
    (dict(query=np.ones((2, 6, 3, 8)), key=np.ones((2, 4, 5, 8)), value=np.ones((2, 4, 5, 8)),
          enable_gqa=True), ValueError,
     r"^sdpa: query.shape\[1\] \(heads\) is 6, which is not a multiple of key.shape\[1\] "
     r"\(kv_heads\) 4"),
    (dict(query=Q4, key=KV2, value=np.ones((2, 3, 5, 8)), enable_gqa=True), ValueError,
     r"^sdpa: key.shape\[1\] \(kv_heads\) is 2 and value.shape\[1\] is 3; with enable_gqa=True "
     r"each must divide the query heads, 4"),
    (dict(enable_gqa=True), ValueError,
     r"^sdpa: enable_gqa=True needs a heads dimension at -3 but query has rank 2"),
    (dict(attn_mask=np.ones((3, 4), bool)), ValueError,
     r"^sdpa: attn_mask.shape\[1\] is 4 but must be 1 or 2 \(kv_len\)"),
    (dict(attn_mask=np.ones((5, 2), bool)), ValueError,
     r"^sdpa: attn_mask.shape\[0\] is 5 but must be 1 or 3 \(q_len\)"),
    (dict(query=Q4, key=Q4, value=Q4, attn_mask=np.ones((3, 1, 3, 3), bool)), ValueError,
     r"^sdpa: attn_mask.shape\[0\] is 3 but must be 1 or 2 to broadcast to the scores' batch "
     r"shape \(2, 4\)"),
    # the mask is added to the scores (query and key batch) before value's batch dims join
    (dict(value=np.ones((3, 2, 8)), attn_mask=np.ones((3, 3, 2), bool)), ValueError,
     r"^sdpa: attn_mask has rank 3 but the attention scores have rank 2"),
    (dict(attn_mask=np.ones((1, 3, 2), bool)), ValueError,
     r"^sdpa: attn_mask has rank 3 but the attention scores have rank 2"),
    (dict(scale=float("inf")), ValueError, r"^sdpa: scale is inf but must be finite"),
    (dict(scale=float("nan")), ValueError, r"^sdpa: scale is nan but must be finite"),
    (dict(query=np.ones((3, 8), np.float32)), TypeError,
     r"^sdpa: key.dtype is float64 but query.dtype is float32"),
    (dict(value=np.ones((2, 8), np.float32)), TypeError,
     r"^sdpa: value.dtype is float32 but query.dtype is float64"),
    (dict(query=np.ones((3, 8), np.float16)), TypeError,
     r"^sdpa: key.dtype is float64 but query.dtype is float16; float64 needs query, key and "
     r"value all float64"),
    (dict(key=np.ones((2, 8), np.complex64)), TypeError,
     r"^sdpa: key.dtype is complex64 but must be float32, float64, float16 or bfloat16"),
    (dict(value=[["a", "b"]]), TypeError, r"^sdpa: value.dtype is <U1 but must be float32"),
    (dict(query=None), TypeError, r"^sdpa: query.dtype is object but must be float32"),
    (dict(attn_mask=np.ones((3, 2), np.complex128)), TypeError,
     r"^sdpa: attn_mask.dtype is complex128 but must be bool \(True = attend\) or a float"),
    (dict(attn_mask=np.zeros((3, 2), np.uint8).view(np.dtype("V1"))), TypeError,
     r"^sdpa: attn_mask.dtype is \|V1 but must be bool"),
    (dict(key=[[1.0] * 8, [2.0]]), ValueError, r"^sdpa: key is not a rectangular array"),
])
def test_errors(kwargs, error, match):
    args = dict(query=np.ones((3, 8)), key=np.ones((2, 8)), value=np.ones((2, 8)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sdpa.scaled_dot_product_attention(**args)
    # an error leaves nothing behind: the next call works
    assert sdpa.scaled_dot_product_attention(np.ones((1, 2)), np.ones((1, 2)),
                                             np.ones((1, 2))).shape == (1, 2)


def test_dropout_zero_and_false_causal_are_accepted():
    a = np.ones((2, 4))
    out = sdpa.scaled_dot_product_attention(a, a, a, attn_mask=None, dropout_p=0.0,
                                            is_causal=False, scale=None, enable_gqa=False)
    assert_close(out, a)
    assert_close(sdpa.scaled_dot_product_attention(a, a, a, np.ones((2, 2), bool), 0, False), a)
