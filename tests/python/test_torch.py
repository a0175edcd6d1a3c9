"""Agreement with torch.nn.functional.scaled_dot_product_attention, and PyTorch tensors passed in
through DLPack. Skipped when torch is not installed (it is never a dependency of sdpa)."""

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

# PyTorch's CPU kernels and ours round differently: float32 agrees to a few ulp of O(1) values.
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}

CASES = [
    # (name, query, key, value, mask shape or None, mask kind, is_causal, enable_gqa, scale)
    ("2d", (5, 8), (7, 8), (7, 3), None, None, False, False, None),
    ("4d", (2, 3, 17, 16), (2, 3, 19, 16), (2, 3, 19, 16), None, None, False, False, None),
    ("4d causal Lq < Lkv", (2, 3, 5, 16), (2, 3, 9, 16), (2, 3, 9, 8), None, None, True, False,
     None),
    ("4d causal Lq > Lkv", (2, 3, 9, 16), (2, 3, 5, 16), (2, 3, 5, 8), None, None, True, False,
     None),
    ("scale", (2, 4, 8), (2, 6, 8), (2, 6, 8), None, None, False, False, 0.7),
    ("broadcast batch", (2, 1, 2, 3, 4), (1, 3, 2, 5, 4), (2, 3, 1, 5, 6), None, None, False,
     False, None),
    ("ranks differ", (2, 3, 4, 8), (6, 8), (3, 6, 5), None, None, False, False, None),
    ("gqa", (2, 8, 6, 16), (2, 2, 6, 16), (2, 2, 6, 16), None, None, True, True, None),
    ("gqa kv heads differ", (1, 6, 3, 4), (1, 3, 5, 4), (1, 2, 5, 6), None, None, False, True,
     None),
    ("gqa 5d", (2, 3, 4, 3, 4), (1, 3, 2, 5, 4), (2, 1, 2, 5, 4), None, None, False, True, None),
    ("bool mask (L, S)", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), (5, 7), "bool", False, False,
     None),
    ("bool mask padding", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), (2, 1, 1, 7), "bool", False,
     False, None),
    ("float mask per head", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), (3, 5, 7), "float", False,
     False, None),
    ("float mask (S,)", (2, 5, 8), (2, 7, 8), (2, 7, 8), (7,), "float", False, False, None),
    ("mask with fully masked rows", (2, 5, 8), (2, 7, 8), (2, 7, 8), (5, 7), "sparse", False,
     False, None),
    ("mask gqa", (2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), (4, 5, 7), "float", False, True, None),
]


def make_inputs(case, dtype, seed=0):
    _, q_shape, k_shape, v_shape, mask_shape, mask_kind, *_ = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(s, generator=gen, dtype=dtype) for s in (q_shape, k_shape, v_shape))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(mask_shape, generator=gen) < 0.7
    elif mask_kind == "float":
        mask = torch.randn(mask_shape, generator=gen, dtype=dtype)
        mask[torch.rand(mask_shape, generator=gen) < 0.2] = -float("inf")
    elif mask_kind == "sparse":
        mask = torch.rand(mask_shape, generator=gen) < 0.3
        mask[1] = False
    return q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_torch(case, dtype):
    *_, is_causal, enable_gqa, scale = case
    q, k, v, mask = make_inputs(case, dtype)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
    tol = TOLERANCE[dtype]
    # numpy arrays in
    out = sdpa.scaled_dot_product_attention(
        q.numpy(), k.numpy(), v.numpy(), attn_mask=None if mask is None else mask.numpy(),
        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    assert out.dtype == q.numpy().dtype
    assert_close(out, expected.numpy(), atol=tol, rtol=tol)
    # torch tensors in, through DLPack
    out = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                            scale=scale, enable_gqa=enable_gqa)
    assert isinstance(out, np.ndarray)
    assert_close(out, expected.numpy(), atol=tol, rtol=tol)


def test_torch_views_are_read_in_place():
    """A packed QKV tensor sliced into q, k, v is read through DLPack without a copy."""
    from sdpa import _arrays

    qkv = torch.randn(2, 5, 3, 4, 8)  # (B, L, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D) strided views
    before = qkv.clone()
    out = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy(),
                 atol=2e-5, rtol=2e-5)
    assert torch.equal(qkv, before)
    assert np.shares_memory(_arrays.as_operand("query", q), qkv.numpy())


def test_seed_functions_take_tensors():
    Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    V = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = sdpa.self_attention(Q, Q, V)
    assert out.dtype == np.float32
    assert_close(out, [[1.660477, 2.660477], [2.339523, 3.339523]], atol=1e-6, rtol=0)
    W = torch.eye(2, dtype=torch.float64)
    assert_close(sdpa.compute_qkv(Q.double(), W, W, W)[0], Q.double().numpy())


@pytest.mark.parametrize("tensor, error, match", [
    (lambda t: t.to(torch.complex64), TypeError,
     r"^sdpa: query.dtype is complex64 but must be float32, float64, float16 or bfloat16"),
    (lambda t: t.clone().requires_grad_(), TypeError,
     r"^sdpa: query \(Tensor, dtype torch.float32\) cannot be read through DLPack.*detach"),
])
def test_unsupported_tensors(tensor, error, match):
    t = torch.ones(3, 4)
    with pytest.raises(error, match=match):
        sdpa.scaled_dot_product_attention(tensor(t), t, t)


def test_bfloat16_tensors_become_ml_dtypes_arrays():
    """The numpy API reads a torch bfloat16 tensor as an ml_dtypes.bfloat16 view of its memory
    (its bits through DLPack), so the result is that of the same values as a numpy array."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(2, 5, 8).bfloat16()
    out = sdpa.scaled_dot_product_attention(t, t, t, is_causal=True)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    as_numpy = t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    expected = sdpa.scaled_dot_product_attention(as_numpy, as_numpy, as_numpy, is_causal=True)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))
    with pytest.raises(TypeError, match=r"^sdpa: query \(Tensor, dtype torch.bfloat16\) cannot "
                                        r"be read through DLPack.*detach"):
        sdpa.scaled_dot_product_attention(t.clone().requires_grad_(), t, t)


def test_both_refuse_mask_with_is_causal():
    q = torch.ones(3, 4)
    mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask, is_causal=True)
    with pytest.raises(ValueError, match=r"^sdpa: attn_mask is given and is_causal is True"):
        sdpa.scaled_dot_product_attention(q, q, q, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("shapes, enable_gqa", [
    (((2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8)), False),   # heads differ without enable_gqa
    (((2, 3, 8), (3, 5, 8), (3, 5, 8)), False),             # batch 2 vs 3
    (((1, 6, 3, 8), (1, 4, 5, 8), (1, 4, 5, 8)), True),     # 4 kv heads do not divide 6
    (((1, 2, 3, 8), (1, 4, 5, 8), (1, 4, 5, 8)), True),     # more kv heads than query heads
])
def test_both_refuse_the_same_shapes(shapes, enable_gqa):
    q, k, v = (torch.ones(s) for s in shapes)
    with pytest.raises((RuntimeError, ValueError)):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=enable_gqa)
    with pytest.raises(ValueError, match=r"^sdpa: "):
        sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=enable_gqa)


def random_call(rng):
    """Arguments of one scaled_dot_product_attention call: random ranks, batch dims of 1-3 that
    may or may not broadcast, masks of any rank, GQA head counts; many are invalid on purpose."""
    q_len, kv_len, head_dim, v_dim = (int(n) for n in rng.integers(1, 5, size=4))
    rank = int(rng.integers(0, 4))

    def shape(core):
        batch = rng.choice([1, 2, 3], size=int(rng.integers(0, rank + 1)))
        return tuple(int(n) for n in batch) + core

    q_shape = shape((q_len, head_dim))
    k_shape = shape((kv_len, head_dim))
    v_shape = shape((kv_len, v_dim))
    enable_gqa = bool(rng.random() < 0.3)
    if enable_gqa and len(q_shape) >= 3 and rng.random() < 0.5:
        q_shape = q_shape[:-3] + (int(rng.choice([2, 4, 6])),) + q_shape[-2:]
    if rng.random() < 0.05:
        k_shape = k_shape[:-1] + (head_dim + 1,)
    dtype = torch.float32 if rng.random() < 0.5 else torch.float64
    q, k, v = (torch.randn(s, dtype=dtype) for s in (q_shape, k_shape, v_shape))
    mask, is_causal = None, False
    kind = rng.choice(["none", "bool", "float", "causal"])
    if kind == "causal":
        is_causal = True
    elif kind != "none":
        mask_rank = int(rng.integers(2, rank + 4))
        mask_shape = tuple(int(n) for n in rng.choice([1, 2, 3], size=mask_rank - 2))
        mask_shape += (int(rng.choice([1, q_len])), int(rng.choice([1, kv_len])))
        mask = (torch.rand(mask_shape) < 0.7 if kind == "bool"
                else torch.randn(mask_shape, dtype=dtype))
    scale = None if rng.random() < 0.7 else float(rng.random())
    return dict(query=q, key=k, value=v, attn_mask=mask, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa)


def test_random_calls_agree_with_torch():
    """For 400 random calls: where PyTorch computes, sdpa computes the same; where PyTorch
    refuses, sdpa refuses with a ValueError. (Empty inputs are left out: PyTorch returns zeros
    shaped like query for them without checking shapes; see docs/python.md.)"""
    rng = np.random.default_rng(2024)
    computed = refused = 0
    for _ in range(400):
        call = random_call(rng)
        try:
            expected = F.scaled_dot_product_attention(**call).numpy()
        except (RuntimeError, IndexError, ValueError):
            expected = None
        arrays = {name: (value.numpy() if isinstance(value, torch.Tensor) else value)
                  for name, value in call.items()}
        description = {name: tuple(value.shape) if isinstance(value, np.ndarray) else value
                       for name, value in arrays.items()}
        if expected is None:
            with pytest.raises(ValueError, match=r"^sdpa: "):
                sdpa.scaled_dot_product_attention(**arrays)
            refused += 1
            continue
        out = sdpa.scaled_dot_product_attention(**arrays)
        tol = TOLERANCE[call["query"].dtype]
        assert out.shape == expected.shape, description
        assert_close(out, expected, atol=tol, rtol=tol, what=str(description))
        computed += 1
    assert computed > 100 and refused > 100
