"""The seed task's two functions (shared/seed/self-attention-task.txt)."""

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close, reference_attention

SEED_OUTPUT = [[1.660477, 2.660477], [2.339523, 3.339523]]


def test_seed_example():
    Q = np.array([[1, 0], [0, 1]])
    K = np.array([[1, 0], [0, 1]])
    V = np.array([[1, 2], [3, 4]])
    out = sdpa.self_attention(Q, K, V)
    assert out.dtype == np.float64  # ints compute in float64
    assert_close(out, SEED_OUTPUT, atol=5e-7, rtol=0)


def test_seed_example_from_lists_and_float32():
    lists = ([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 2], [3, 4]])
    assert_close(sdpa.self_attention(*lists), SEED_OUTPUT, atol=5e-7, rtol=0)
    out32 = sdpa.self_attention(*(np.array(m, dtype=np.float32) for m in lists))
    assert out32.dtype == np.float32
    assert_close(out32, SEED_OUTPUT, atol=1e-6, rtol=0)


def test_seed_starter_code_flow(rng):
    """X and weights -> compute_qkv -> self_attention, against numpy."""
    X = rng.standard_normal((7, 5))
    W_q, W_k = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    W_v = rng.standard_normal((5, 3))
    Q, K, V = sdpa.compute_qkv(X, W_q, W_k, W_v)
    assert_close(Q, X @ W_q)
    assert_close(K, X @ W_k)
    assert_close(V, X @ W_v)
    expected, _ = reference_attention(X @ W_q, X @ W_k, X @ W_v)
    assert_close(sdpa.self_attention(Q, K, V), expected)


def test_compute_qkv_float32_accumulates_in_float64(rng):
    X = rng.standard_normal((6, 33)).astype(np.float32)
    W = rng.standard_normal((33, 4)).astype(np.float32)
    Q, K, V = sdpa.compute_qkv(X, W, W, W)
    assert Q.dtype == np.float32
    exact = X.astype(np.float64) @ W.astype(np.float64)
    assert_close(Q, exact.astype(np.float32), atol=0, rtol=0)  # rounded once, at the end


def test_self_attention_kv_longer_than_queries(rng):
    Q, K, V = rng.standard_normal((3, 4)), rng.standard_normal((9, 4)), rng.standard_normal((9, 2))
    assert_close(sdpa.self_attention(Q, K, V), reference_attention(Q, K, V)[0])


def test_seed_functions_on_strided_views(rng):
    packed = rng.standard_normal((6, 3, 4))  # (seq, q/k/v, dim): rows of Q are 12 apart
    Q, K, V = packed[:, 0], packed[:, 1], packed[:, 2]
    assert_close(sdpa.self_attention(Q, K, V), reference_attention(Q, K, V)[0])
    assert_close(sdpa.self_attention(Q.T.T, np.asfortranarray(K), V[::-1]),
                 reference_attention(Q, K, V[::-1])[0])


@pytest.mark.parametrize("args, error, match", [
    (([[[1.0]]], [[1.0]], [[1.0]]), ValueError, r"^sdpa: Q has rank 3 but must have rank 2"),
    (([[1.0]], [1.0], [[1.0]]), ValueError, r"^sdpa: K has rank 1 but must have rank 2"),
    (([[1.0, 2.0]], [[1.0]], [[1.0]]), ValueError,
     r"^sdpa: K.shape\[1\] \(head_dim\) is 1 but Q.shape\[1\] is 2"),
    (([[1.0]], [[1.0], [2.0]], [[1.0]]), ValueError,
     r"^sdpa: V.shape\[0\] \(kv_len\) is 1 but K.shape\[0\] is 2"),
    ((np.ones((1, 1), np.float32), [[1.0]], [[1.0]]), TypeError,
     r"^sdpa: K.dtype is float64 but Q.dtype is float32"),
    (([[1j]], [[1.0]], [[1.0]]), TypeError, r"^sdpa: Q.dtype is complex128 but must be float32"),
    (([[1.0, 2.0], [3.0]], [[1.0]], [[1.0]]), ValueError, r"^sdpa: Q is not a rectangular array"),
])
def test_self_attention_errors(args, error, match):
    with pytest.raises(error, match=match):
        sdpa.self_attention(*args)


@pytest.mark.parametrize("args, error, match", [
    ((np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 2)), np.ones((3, 2))), ValueError,
     r"^sdpa: W_k.shape\[0\] is 2 but X.shape\[1\] \(d_model\) is 3"),
    ((np.ones(3), np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2))), ValueError,
     r"^sdpa: X has rank 1 but must have rank 2"),
    ((np.ones((2, 3)), np.ones((3, 2), np.float32), np.ones((3, 2)), np.ones((3, 2))), TypeError,
     r"^sdpa: W_q.dtype is float32 but X.dtype is float64"),
    ((np.ones((2, 3), np.float16), np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2))), TypeError,
     r"^sdpa: X.dtype is float16 but must be float32 or float64"),
])
def test_compute_qkv_errors(args, error, match):
    with pytest.raises(error, match=match):
        sdpa.compute_qkv(*args)
