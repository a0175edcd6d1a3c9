"""sdpa.attention (the engine's (B, H, L, D) API with both causal alignments and the LSE),
sdpa.explain and the thread settings."""

import threading

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close, reference_attention


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [
    ((5, 8), (7, 8), (7, 3)),                      # 2-D (seq, dim)
    ((3, 5, 8), (3, 7, 8), (3, 7, 8)),             # 3-D (heads, seq, dim)
    ((2, 3, 17, 16), (2, 3, 19, 16), (2, 3, 19, 5)),
    ((2, 6, 5, 8), (2, 2, 9, 8), (2, 2, 9, 8)),    # GQA 3:1
    ((1, 4, 3, 8), (1, 1, 9, 8), (1, 1, 9, 8)),    # MQA
], ids=["2d", "3d", "4d", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_out_and_lse_against_reference(shapes, causal, dtype, rng):
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in shapes)
    gqa = q.ndim >= 3 and q.shape[-3] != k.shape[-3]
    out, lse = sdpa.attention(q, k, v, causal=causal, return_lse=True)
    expected_out, expected_lse = reference_attention(q, k, v, causal=causal, gqa=gqa)
    assert out.dtype == dtype and lse.dtype == dtype
    assert lse.shape == q.shape[:-1]  # (B, H, Lq), one rank below query
    assert_close(out, expected_out)
    assert_close(lse, expected_lse, what="lse")
    assert_close(sdpa.attention(q, k, v, causal=causal), out, atol=0, rtol=0)


@pytest.mark.parametrize("q_len, kv_len", [(3, 7), (7, 3), (1, 5), (5, 5), (17, 2)])
def test_causal_alignments(q_len, kv_len, rng):
    """top_left: j <= i; bottom_right: j <= i + Lkv - Lq. With Lq > Lkv the first rows of
    bottom_right see no key: out = 0, lse = -inf."""
    q = rng.standard_normal((2, q_len, 4))
    k = rng.standard_normal((2, kv_len, 4))
    v = rng.standard_normal((2, kv_len, 3))
    for causal, offset in (("top_left", 0), ("bottom_right", kv_len - q_len)):
        out, lse = sdpa.attention(q, k, v, causal=causal, return_lse=True)
        visible = np.tril(np.ones((q_len, kv_len), dtype=bool), k=offset)
        expected_out, expected_lse = reference_attention(q, k, v, mask=visible)
        assert_close(out, expected_out, what=f"{causal} out")
        assert_close(lse, expected_lse, what=f"{causal} lse")
        empty_rows = ~visible.any(axis=1)
        assert np.all(out[:, empty_rows] == 0)
        assert np.all(lse[:, empty_rows] == -np.inf)


def test_mask_and_causal_combine(rng):
    q, k, v = (rng.standard_normal((2, 3, 6, 8)) for _ in range(3))
    mask = rng.random((3, 1, 6)) < 0.6  # per head, broadcast over query rows
    out = sdpa.attention(q, k, v, mask=mask, causal="bottom_right")
    both = np.tril(np.ones((6, 6), dtype=bool)) & mask
    assert_close(out, reference_attention(q, k, v, mask=both)[0])


def test_nan_in_masked_keys_and_values_does_not_leak(rng):
    q = rng.standard_normal((4, 8))
    k, v = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    mask = np.array([True, True, True, False, False, True])
    expected = reference_attention(q, k, v, mask=mask)[0]
    k[3], v[4] = np.nan, np.inf
    assert_close(sdpa.attention(q, k, v, mask=mask), expected)
    # causal: rows 0..2 of top-left never see keys 3 and 4
    expected = reference_attention(q[:3], k[:3], v[:3], causal="top_left")[0]
    assert_close(sdpa.attention(q, k, v, causal="top_left")[:3], expected)


def test_scale_and_large_logits(rng):
    q, k, v = (rng.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(3))
    assert_close(sdpa.attention(q, k, v, scale=0.25),
                 reference_attention(q, k, v, scale=0.25)[0])
    out, lse = sdpa.attention(q, k, v, scale=2e3, return_lse=True)  # logits ~ +-1e4
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    expected_out, expected_lse = reference_attention(q, k, v, scale=2e3)
    assert_close(out, expected_out, atol=1e-4, rtol=1e-4)
    assert_close(lse, expected_lse, atol=1e-2, rtol=1e-5, what="lse")


def test_accepts_lists_views_and_read_only(rng):
    q = rng.standard_normal((2, 3, 4, 8))
    q.setflags(write=False)
    k = np.asfortranarray(rng.standard_normal((2, 3, 5, 8)))
    v = rng.standard_normal((2, 3, 8, 5)).swapaxes(-1, -2)  # last dim not contiguous: copied
    assert_close(sdpa.attention(q, k, v), reference_attention(q, k, v)[0])
    assert_close(sdpa.attention([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 2], [3, 4]]),
                 [[1.660477, 2.660477], [2.339523, 3.339523]], atol=5e-7, rtol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(causal="diagonal"), ValueError,
     r"^sdpa: causal is 'diagonal' but must be None, 'top_left' or 'bottom_right'"),
    (dict(causal=True), TypeError, r"^sdpa: causal is True but must be None.*'top_left'"),
    (dict(query=np.ones((1, 2, 3, 4, 8))), ValueError,
     r"^sdpa: query has rank 5 but at most 4 dimensions are supported"),
    (dict(key=np.ones((1, 5, 8))), ValueError, r"^sdpa: key has rank 3 but query has rank 2"),
    (dict(query=np.ones(8), key=np.ones(8), value=np.ones(8)), ValueError,
     r"^sdpa: query has rank 1 but must have rank 2 \(seq, dim\), 3 \(heads, seq, dim\) or 4"),
    (dict(query=np.ones((6, 3, 8)), key=np.ones((4, 5, 8)), value=np.ones((4, 5, 8))), ValueError,
     r"^sdpa: query.shape\[0\] \(heads\) is 6, which is not a multiple of key.shape\[0\]"),
    (dict(query=np.ones((2, 1, 3, 8)), key=np.ones((1, 1, 5, 8)), value=np.ones((1, 1, 5, 8))),
     ValueError, r"^sdpa: key.shape\[0\] \(batch\) is 1 but query.shape\[0\] is 2"),
    (dict(mask=np.ones((2, 3, 5), bool)), ValueError,
     r"^sdpa: mask.shape\[0\] is 2 but must be 1 or 1 \(heads\)"),
    (dict(mask=np.ones((1, 1, 1, 1, 5), bool)), ValueError,
     r"^sdpa: mask has rank 5 but at most 4 dimensions are supported"),
    (dict(scale=float("-inf")), ValueError, r"^sdpa: scale is -inf but must be finite"),
    (dict(scale="big"), TypeError, r"^sdpa: scale is 'big' but must be a real number or None"),
    (dict(value=np.ones((5, 3), np.float32)), TypeError,
     r"^sdpa: value.dtype is float32 but query.dtype is float64"),
    (dict(mask=np.ones((3, 5), np.int8)), None, None),  # ints are fine: they become float64
])
def test_errors(kwargs, error, match):
    args = dict(query=np.ones((3, 8)), key=np.ones((5, 8)), value=np.ones((5, 3)))
    args.update(kwargs)
    if error is None:
        sdpa.attention(**args)
        return
    with pytest.raises(error, match=match):
        sdpa.attention(**args)
    with pytest.raises(error, match=match):
        sdpa.explain(**{k: v for k, v in args.items() if k != "return_lse"})


def test_explain_names_a_backend_and_validates():
    x = np.zeros((2, 4, 16, 8), np.float32)
    plan = sdpa.explain(x, x, x, causal="top_left")
    assert plan.startswith("sdpa plan: backend=")
    assert "threads=" in plan


def test_threads_setting():
    before = sdpa.get_num_threads()
    assert before >= 1
    try:
        sdpa.set_num_threads(1)
        assert sdpa.get_num_threads() == 1
        with pytest.raises(ValueError, match=r"^sdpa: n is -1 but must be in \[0, 1024\]"):
            sdpa.set_num_threads(-1)
        with pytest.raises(TypeError, match=r"^sdpa: n is 1.5 but must be an int"):
            sdpa.set_num_threads(1.5)
        with pytest.raises(ValueError, match=r"^sdpa: n is 4294967296 but must be in \[0, 1024\]"):
            sdpa.set_num_threads(2**32)
        assert sdpa.get_num_threads() == 1  # a refused value changes nothing
        sdpa.set_num_threads(np.int64(2))
        assert sdpa.get_num_threads() == 2
    finally:
        sdpa.set_num_threads(0)
    assert sdpa.get_num_threads() == before


def test_results_do_not_depend_on_threads(rng):
    q = rng.standard_normal((2, 4, 150, 32)).astype(np.float32)
    k = rng.standard_normal((2, 4, 300, 32)).astype(np.float32)
    v = rng.standard_normal((2, 4, 300, 32)).astype(np.float32)
    try:
        results = []
        for threads in (1, 2, 3):
            sdpa.set_num_threads(threads)
            results.append(sdpa.attention(q, k, v, causal="bottom_right", return_lse=True))
    finally:
        sdpa.set_num_threads(0)
    for out, lse in results[1:]:
        assert np.array_equal(out, results[0][0]) and np.array_equal(lse, results[0][1])


def test_calls_from_python_threads(rng):
    """The GIL is released while computing: calls from several threads run side by side and
    each gets its own correct result."""
    inputs = [tuple(rng.standard_normal((2, 40, 16)) for _ in range(3)) for _ in range(4)]
    results = [None] * len(inputs)

    def work(i):
        results[i] = sdpa.attention(*inputs[i], causal="top_left")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (q, k, v), out in zip(inputs, results):
        assert_close(out, reference_attention(q, k, v, causal="top_left")[0])
