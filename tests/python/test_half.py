"""bfloat16 and float16 through the Python package (issue 13): numpy float16 and ml_dtypes.bfloat16
arrays in sdpa.attention, attention_backward and scaled_dot_product_attention; torch bfloat16
and float16 tensors in sdpa.torch.attention with autograd.

Every comparison is against float64 on the same rounded inputs (the 16-bit values themselves),
with the bounds of docs/semantics.md 13.9, as fractions of max|V| (forward) or of the largest
reference gradient (backward):
  out:  bfloat16 5e-3, float16 1e-3, float32 queries on a 16-bit cache 2e-3;
  grads: bfloat16 1e-2, float16 2e-3.
lse is float32 computed from float32 scores of exact 16-bit products: the float32 tolerance.
"""

import dataclasses
from typing import Optional

import numpy as np
import pytest

import sdpa
from sdpa_reference import TOLERANCE, assert_close, reference_attention, variant_backward

ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
HALF = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]

OUT_BOUND = {BF16: 5e-3, F16: 1e-3}
CACHE_BOUND = 2e-3  # float32 queries on a bfloat16/float16 key and value
GRAD_BOUND = {BF16: 1e-2, F16: 2e-3}
LSE_ATOL, LSE_RTOL = TOLERANCE[F32]


@dataclasses.dataclass
class Case:
    name: str
    batch: int = 1
    heads: int = 2
    kv_heads: int = 2
    q_len: int = 17
    kv_len: int = 17
    head_dim: int = 16
    v_dim: int = 16
    causal: Optional[str] = None
    mask: Optional[str] = None  # None, "bool", "additive" (in the query's dtype), "float32"

    def __str__(self):
        return self.name


CASES = [
    Case("one_by_one", heads=1, kv_heads=1, q_len=1, kv_len=1, head_dim=1, v_dim=1),
    Case("plain"),
    Case("odd_dims", q_len=3, kv_len=70, head_dim=33, v_dim=7),
    Case("gqa", batch=2, heads=8, kv_heads=2, q_len=65, kv_len=130, head_dim=64, v_dim=64),
    Case("mqa_causal", heads=4, kv_heads=1, q_len=40, kv_len=40, causal="top_left"),
    Case("decode_bottom_right", heads=4, kv_heads=2, q_len=3, kv_len=300, head_dim=128,
         v_dim=128, causal="bottom_right"),
    Case("long_causal", heads=1, kv_heads=1, q_len=600, kv_len=600, head_dim=64, v_dim=64,
         causal="top_left"),
    Case("bool_mask", q_len=33, kv_len=47, mask="bool"),
    Case("additive_mask", q_len=33, kv_len=47, mask="additive"),
    Case("float32_mask", q_len=33, kv_len=47, mask="float32", causal="bottom_right"),
]


def rounded(rng, shape, dtype):
    """Standard-normal values rounded to `dtype` (nearest even, by numpy / ml_dtypes)."""
    return rng.standard_normal(shape).astype(dtype)


def operands(rng, case, q_dtype, kv_dtype):
    q = rounded(rng, (case.batch, case.heads, case.q_len, case.head_dim), q_dtype)
    k = rounded(rng, (case.batch, case.kv_heads, case.kv_len, case.head_dim), kv_dtype)
    v = rounded(rng, (case.batch, case.kv_heads, case.kv_len, case.v_dim), kv_dtype)
    return q, k, v


def make_mask(rng, case, dtype):
    """The case's mask, with every row of query 0 removed: a fully masked row in each."""
    shape = (case.q_len, case.kv_len)
    if case.mask is None:
        return None
    if case.mask == "bool":
        keep = rng.random(shape) < 0.7
        keep[0] = False
        return keep
    bias = np.where(rng.random(shape) < 0.7, rng.standard_normal(shape), -np.inf)
    bias[0] = -np.inf
    return bias.astype(dtype if case.mask == "additive" else F32)


def fraction_of(actual, expected, scale):
    """max|actual - expected| / scale, the measure the bounds are stated in."""
    return float(np.abs(actual.astype(np.float64) - expected).max() / scale) if actual.size else 0.0


def assert_within(actual, expected, bound, scale, what):
    error = fraction_of(actual, expected, scale)
    assert error <= bound, f"{what}: max error {error:.3g}·{scale:.3g} above {bound}·{scale:.3g}"


def f64(x):
    return np.asarray(x).astype(np.float64)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_the_float64_reference(rng, case, dtype):
    q, k, v = operands(rng, case, dtype, dtype)
    mask = make_mask(rng, case, dtype)
    out, lse = sdpa.attention(q, k, v, mask=mask, causal=case.causal, return_lse=True)
    assert out.dtype == dtype and lse.dtype == F32
    ref_out, ref_lse = reference_attention(f64(q), f64(k), f64(v), None if mask is None
                                           else np.asarray(mask, bool if mask.dtype == bool
                                                           else np.float64),
                                           causal=case.causal, gqa=True)
    assert_within(out, ref_out, OUT_BOUND[dtype], np.abs(f64(v)).max(), "out")
    assert_close(lse, ref_lse, LSE_ATOL, LSE_RTOL, what="lse")
    if mask is not None:  # query row 0 sees no key: out = 0, lse = -inf
        assert not f64(out[:, :, 0]).any() and np.all(lse[:, :, 0] == -np.inf)


@pytest.mark.parametrize("dtype", HALF)
def test_float32_queries_on_a_16_bit_cache(rng, dtype):
    case = Case("cache", heads=8, kv_heads=2, q_len=4, kv_len=257, head_dim=64, v_dim=64,
                causal="bottom_right")
    q, k, v = operands(rng, case, F32, dtype)
    out = sdpa.attention(q, k, v, causal=case.causal)
    assert out.dtype == F32
    ref, _ = reference_attention(q, f64(k), f64(v), causal=case.causal, gqa=True)
    assert_within(out, ref, CACHE_BOUND, np.abs(f64(v)).max(), "out")


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_queries_on_a_float32_cache(rng, dtype):
    case = Case("cache32", heads=4, kv_heads=2, q_len=9, kv_len=40)
    q, k, v = operands(rng, case, dtype, F32)
    out = sdpa.attention(q, k, v)
    assert out.dtype == dtype
    ref, _ = reference_attention(f64(q), k, v, gqa=True)
    assert_within(out, ref, OUT_BOUND[dtype], np.abs(v).max(), "out")


@pytest.mark.parametrize("mask_dtype", [pytest.param(BF16, id="bfloat16_mask"),
                                        pytest.param(F16, id="float16_mask"),
                                        pytest.param(np.dtype(np.float64), id="float64_mask")])
@pytest.mark.parametrize("dtype", HALF)
def test_additive_masks_of_every_float_dtype(rng, dtype, mask_dtype):
    case = Case("masks", q_len=12, kv_len=20)
    q, k, v = operands(rng, case, dtype, dtype)
    bias = rounded(rng, (case.q_len, case.kv_len), mask_dtype)
    bias[3] = -np.inf  # row 3 sees no key
    out = sdpa.attention(q, k, v, mask=bias)
    ref, _ = reference_attention(f64(q), f64(k), f64(v), f64(bias))
    assert_within(out, ref, OUT_BOUND[dtype], np.abs(f64(v)).max(), "out")
    assert not f64(out[:, :, 3]).any()


@pytest.mark.parametrize("dtype", HALF)
def test_int_and_list_masks_are_read_as_float32_for_16_bit_queries(rng, dtype):
    q, k, v = (rounded(rng, (5, 8), dtype) for _ in range(3))
    bias = [[0, -1, 2, 0, 1]] * 5  # an int list: float32, not the query's 16 bits
    out = sdpa.attention(q, k, v, mask=np.array(bias))
    assert_close(f64(sdpa.attention(q, k, v, mask=bias)), f64(out), 0, 0)
    ref, _ = reference_attention(f64(q), f64(k), f64(v), np.array(bias, np.float64))
    assert_within(out, ref, OUT_BOUND[dtype], np.abs(f64(v)).max(), "out")


BACKWARD_CASES = [
    Case("plain_backward", q_len=9, kv_len=13),
    Case("gqa_causal_backward", batch=2, heads=4, kv_heads=2, q_len=70, kv_len=70, head_dim=64,
         v_dim=32, causal="top_left"),
    Case("masked_backward", q_len=20, kv_len=33, head_dim=33, v_dim=17, mask="bool"),
    Case("additive_backward", heads=4, kv_heads=1, q_len=20, kv_len=33, mask="additive",
         causal="bottom_right"),
]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=str)
def test_backward_matches_the_float64_reference(rng, case, dtype):
    q, k, v = operands(rng, case, dtype, dtype)
    mask = make_mask(rng, case, dtype)
    out, lse = sdpa.attention(q, k, v, mask=mask, causal=case.causal, return_lse=True)
    grad_out = rounded(rng, out.shape, dtype)
    grads = sdpa.attention_backward(grad_out, q, k, v, out, lse, mask=mask, causal=case.causal)
    ref_mask = None if mask is None else np.asarray(mask, bool if mask.dtype == bool
                                                    else np.float64)
    refs = variant_backward(f64(grad_out), f64(q), f64(k), f64(v), mask=ref_mask,
                            causal=case.causal)[:3]
    for name, grad, ref, x in zip(("grad_query", "grad_key", "grad_value"), grads, refs,
                                  (q, k, v)):
        assert grad.dtype == dtype and grad.shape == x.shape, name
        assert_within(grad, ref, GRAD_BOUND[dtype], np.abs(ref).max(), name)
    if mask is not None:  # the fully masked query row 0 has no gradient
        assert not f64(grads[0][:, :, 0]).any()


@pytest.mark.parametrize("dtype", HALF)
def test_backward_gradients_take_each_inputs_dtype(rng, dtype):
    case = Case("mixed_backward", q_len=8, kv_len=12)
    q, k, v = operands(rng, case, F32, dtype)
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    grad_out = rng.standard_normal(out.shape).astype(dtype)  # grad_out may be 16-bit too
    dq, dk, dv = sdpa.attention_backward(grad_out, q, k, v, out, lse)
    assert (dq.dtype, dk.dtype, dv.dtype) == (F32, dtype, dtype)
    refs = variant_backward(f64(grad_out), q, f64(k), f64(v))[:3]
    for name, grad, ref in zip(("grad_query", "grad_key", "grad_value"), (dq, dk, dv), refs):
        assert_within(grad, ref, GRAD_BOUND[dtype], np.abs(ref).max(), name)


@pytest.mark.parametrize("dtype", HALF)
def test_scaled_dot_product_attention_broadcasts_16_bit_arrays(rng, dtype):
    q = rounded(rng, (3, 4, 10, 16), dtype)
    k = rounded(rng, (1, 2, 14, 16), dtype)  # batch broadcast, GQA on dim -3
    v = rounded(rng, (1, 2, 14, 8), dtype)
    keep = np.tril(np.ones((10, 14), dtype=bool), k=4)
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    assert out.shape == (3, 4, 10, 8) and out.dtype == dtype
    ref, _ = reference_attention(f64(q), f64(k), f64(v), keep, gqa=True)
    assert_within(out, ref, OUT_BOUND[dtype], np.abs(f64(v)).max(), "out")


def test_big_endian_float16_is_read_in_native_order(rng):
    q, k, v = (rounded(rng, (6, 8), F16) for _ in range(3))
    native = sdpa.attention(q, k, v)
    swapped = sdpa.attention(*(x.astype(">f2") for x in (q, k, v)))
    assert swapped.dtype == F16
    np.testing.assert_array_equal(swapped, native)


def test_strided_bfloat16_views_give_what_their_copies_give(rng):
    """Slices of a packed QKV buffer (rows strided, last dim contiguous) cross as uint16 views of
    the same memory: the result is that of contiguous copies."""
    qkv = rounded(rng, (2, 16, 3, 32), BF16)
    q, k, v = (qkv[:, :, i] for i in range(3))
    assert not q.flags.c_contiguous
    out = sdpa.attention(q, k, v, causal="top_left")
    copied = sdpa.attention(*(np.ascontiguousarray(x) for x in (q, k, v)), causal="top_left")
    np.testing.assert_array_equal(f64(out), f64(copied))


@pytest.mark.parametrize("args, match", [
    (("key", F16, "value", BF16), r"value\.dtype is bfloat16 .*key\.dtype is float16"),
    (("key", np.float64, "value", np.float64), r"float64"),
    (("query", np.float64, None, None), r"float64"),
], ids=["key_f16_value_bf16", "f64_cache_for_bf16_query", "f64_query_on_bf16_cache"])
def test_mixed_dtypes_are_errors_naming_the_argument(rng, args, match):
    arrays = {"query": rounded(rng, (4, 8), BF16), "key": rounded(rng, (5, 8), BF16),
              "value": rounded(rng, (5, 8), BF16)}
    for name, dtype in zip(args[::2], args[1::2]):
        if name is not None:
            arrays[name] = arrays[name].astype(dtype)
    with pytest.raises(TypeError, match=match):
        sdpa.attention(arrays["query"], arrays["key"], arrays["value"])


def test_complex_arrays_name_the_supported_dtypes():
    with pytest.raises(TypeError, match=r"key\.dtype is complex64 but must be float32, float64, "
                                        r"float16 or bfloat16"):
        sdpa.attention(np.zeros((2, 4), F16), np.zeros((2, 4), np.complex64), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# sdpa.torch: torch bfloat16 / float16 tensors, compared with torch's own attention in float32
# on the same 16-bit values (and with the same bounds, float32 being far more precise).

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


TORCH_HALF = [pytest.param("bfloat16", id="bfloat16"), pytest.param("float16", id="float16")]


@pytest.mark.parametrize("dtype_name", TORCH_HALF)
@pytest.mark.parametrize("causal", [None, "top_left"])
def test_torch_forward_and_backward_match_torch_float32(torch, dtype_name, causal):
    import sdpa.torch
    dtype = getattr(torch, dtype_name)
    bound_out, bound_grad = OUT_BOUND[np.dtype(dtype_name if dtype_name == "float16" else BF16)], \
        GRAD_BOUND[np.dtype(dtype_name if dtype_name == "float16" else BF16)]
    gen = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype) for shape in
               ((2, 8, 50, 64), (2, 2, 70, 64), (2, 2, 70, 64)))
    grad_out = torch.randn(2, 8, 50, 64, generator=gen).to(dtype)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    out = sdpa.torch.attention(*ours, causal=causal)
    out.backward(grad_out)
    theirs = [x.float().requires_grad_() for x in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(
        *theirs, is_causal=causal is not None, enable_gqa=True)
    ref.backward(grad_out.float())
    assert out.dtype == dtype
    scale = v.float().abs().max().item()
    error = (out.float() - ref).abs().max().item() / scale
    assert error <= bound_out, f"out: {error:.3g} above {bound_out}"
    for name, mine, theirs_x in zip(("query", "key", "value"), ours, theirs):
        assert mine.grad.dtype == dtype, name
        ref_grad = theirs_x.grad
        error = (mine.grad.float() - ref_grad).abs().max().item() / ref_grad.abs().max().item()
        assert error <= bound_grad, f"{name}.grad: {error:.3g} above {bound_grad}"


@pytest.mark.parametrize("dtype_name", TORCH_HALF)
def test_torch_float32_queries_on_a_16_bit_cache_keep_each_dtype(torch, dtype_name):
    import sdpa.torch
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 3, 32, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 2, 40, 32, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    out = sdpa.torch.attention(q, k, v, causal="bottom_right")
    out.sum().backward()
    assert out.dtype == torch.float32
    assert (q.grad.dtype, k.grad.dtype, v.grad.dtype) == (torch.float32, dtype, dtype)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.detach(), k.detach().float(), v.detach().float(), enable_gqa=True,
        attn_mask=torch.ones(3, 40, dtype=torch.bool).tril(37))
    error = (out.detach() - ref).abs().max().item() / v.detach().float().abs().max().item()
    assert error <= CACHE_BOUND


@pytest.mark.parametrize("mask_dtype", ["bool", "bfloat16", "float16", "float32"])
@pytest.mark.parametrize("dtype_name", TORCH_HALF)
def test_torch_masks_of_every_dtype(torch, dtype_name, mask_dtype):
    import sdpa.torch
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=gen).to(dtype) for _ in range(3))
    keep = torch.rand(9, 9, generator=gen) < 0.6
    keep[4] = False  # a fully masked row
    if mask_dtype == "bool":
        mask = keep
    else:
        bias = torch.randn(9, 9, generator=gen).masked_fill(~keep, float("-inf"))
        mask = bias.to(getattr(torch, mask_dtype))
    out = sdpa.torch.attention(q, k, v, mask=mask)
    assert out.dtype == dtype
    assert not out[:, :, 4].float().any()
    ref, _ = reference_attention(q.double().numpy(), k.double().numpy(), v.double().numpy(),
                                 mask.numpy() if mask_dtype == "bool" else mask.double().numpy())
    bound = OUT_BOUND[BF16 if dtype_name == "bfloat16" else F16]
    assert_within(out.float().numpy(), ref, bound, v.double().abs().max().item(), "out")


def test_torch_mixed_key_and_value_dtypes_name_the_argument(torch):
    import sdpa.torch
    q = torch.zeros(4, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"value\.dtype is float16"):
        sdpa.torch.attention(q, q, q.half())


@pytest.mark.parametrize("mask_dtype", HALF)
def test_16_bit_masks_on_float64_queries(rng, mask_dtype):
    """A float64 call computes in float64 only: its 16-bit mask is widened, exactly."""
    q, k, v = (rng.standard_normal((6, 8)) for _ in range(3))
    bias = rounded(rng, (6, 6), mask_dtype)
    bias[2] = -np.inf
    out = sdpa.attention(q, k, v, mask=bias)
    assert out.dtype == np.float64
    assert_close(out, reference_attention(q, k, v, f64(bias))[0])


def test_explain_takes_16_bit_arrays(rng):
    q = rounded(rng, (1, 2, 64, 32), BF16)
    assert "sdpa plan:" in sdpa.explain(q, q, q, causal="top_left")
    h = q.astype(F16)
    assert "sdpa plan:" in sdpa.explain(h, h, h)


@pytest.mark.parametrize("name, dtype, match", [
    ("out", np.float64, r"^sdpa: out\.dtype is float64 but query\.dtype is bfloat16; out must be "
                        r"float32, bfloat16 or float16"),
    ("grad_out", np.float64, r"^sdpa: grad_out\.dtype is float64 but query\.dtype is bfloat16"),
    ("lse", BF16, r"^sdpa: lse\.dtype is bfloat16 but query\.dtype is bfloat16; lse must be "
                  r"float32"),
], ids=["float64_out", "float64_grad_out", "bfloat16_lse"])
def test_backward_dtype_errors_name_the_argument(rng, name, dtype, match):
    q, k, v = (rounded(rng, (4, 8), BF16) for _ in range(3))
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    arrays = {"grad_out": out, "out": out, "lse": lse}
    arrays[name] = arrays[name].astype(dtype)
    with pytest.raises(TypeError, match=match):
        sdpa.attention_backward(arrays["grad_out"], q, k, v, arrays["out"], arrays["lse"])


def test_out_and_grad_out_of_another_16_bit_dtype_are_accepted(rng):
    """out and grad_out may be any of float32, bfloat16 and float16, whatever the query's."""
    q, k, v = (rounded(rng, (6, 8), BF16) for _ in range(3))
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    grads = sdpa.attention_backward(out.astype(F16), q, k, v, out.astype(F32), lse)
    refs = variant_backward(f64(out), f64(q), f64(k), f64(v))[:3]
    for name, grad, ref in zip(("grad_query", "grad_key", "grad_value"), grads, refs):
        assert grad.dtype == BF16
        assert_within(grad, ref, GRAD_BOUND[BF16], np.abs(ref).max(), name)
