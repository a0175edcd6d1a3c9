"""Strict arguments (issue 19 item 7): every public function refuses a bad argument of any kind
with an error whose message starts with `sdpa: ` and names the argument as the caller wrote it
(`attn_mask`, `mask`, `window[0]`, `sinks[2]`, `n`, ...), never a field of the C++ sdpa::Options
(`options.mask`, `options.window.left`, ...) or the C++ parameter `num_threads`.

Booleans (is_causal, return_lse, enable_gqa) are bool or numpy.bool_; numbers (scale, softcap,
dropout_p) are real: int, float, numpy real scalars or 0-d real arrays, never str, bytes, bool or
complex. The library's messages are renamed per function by python/sdpa/_errors.py, keeping the
exception type; the table below goes through every message of src/api/validate.cc that the
Python API can reach."""

import fractions

import numpy as np
import pytest

import sdpa

try:
    import torch

    import sdpa.torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def x3():
    """(heads 3, seq 4, dim 8) operands with 5 keys: 3 query heads, q_len 4, kv_len 5."""
    return dict(query=np.ones((3, 4, 8)), key=np.ones((3, 5, 8)), value=np.ones((3, 5, 2)))


# ---------------------------------------------------------------------------------------------
# Booleans


BAD_BOOLS = ["False", "", 1, 0, 1.0, None, np.array(True), [True]]
GOOD_BOOLS = [True, False, np.True_, np.False_]


@pytest.mark.parametrize("value", BAD_BOOLS, ids=repr)
@pytest.mark.parametrize("name", ["is_causal", "enable_gqa"])
def test_sdpa_booleans_must_be_bool(name, value):
    with pytest.raises(TypeError, match=rf"^sdpa: {name} is .* but must be a bool"):
        sdpa.scaled_dot_product_attention(**x3(), **{name: value})


@pytest.mark.parametrize("value", BAD_BOOLS, ids=repr)
def test_return_lse_must_be_bool(value):
    with pytest.raises(TypeError, match=r"^sdpa: return_lse is .* but must be a bool"):
        sdpa.attention(**x3(), return_lse=value)


@pytest.mark.parametrize("value", GOOD_BOOLS, ids=repr)
def test_bool_and_numpy_bool_are_accepted(value):
    args = x3()
    q, k, v = args["query"], args["key"], args["value"]
    causal = sdpa.scaled_dot_product_attention(q, k, v, is_causal=value, enable_gqa=value)
    expected = sdpa.attention(q, k, v, causal="top_left" if value else None)
    assert np.array_equal(causal, expected)
    result = sdpa.attention(q, k, v, return_lse=value)
    assert isinstance(result, tuple) == bool(value)


def test_is_causal_false_string_is_not_true():
    """The bug: is_causal="False" was truthy, so it meant causal attention."""
    with pytest.raises(TypeError, match=r"^sdpa: is_causal is 'False' but must be a bool"):
        sdpa.scaled_dot_product_attention(**x3(), is_causal="False")


# ---------------------------------------------------------------------------------------------
# Real numbers


BAD_NUMBERS = ["0.5", b"1", True, np.True_, 1j, np.complex128(0.5), [0.5], np.array([0.5]),
               np.array("1"), object()]
GOOD_NUMBERS = [1, 0.5, np.float32(0.5), np.float64(0.25), np.int64(1), np.uint8(1),
                np.array(0.5), np.array(1, np.int32), fractions.Fraction(1, 4)]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", ["scale", "softcap", "dropout_p"])
def test_numbers_must_be_real(name, value):
    match = rf"^sdpa: {name} is .* but must be a real number"
    with pytest.raises(TypeError, match=match):
        sdpa.attention(**x3(), **{name: value})
    with pytest.raises(TypeError, match=match):
        sdpa.scaled_dot_product_attention(**x3(), **{name: value})


@pytest.mark.parametrize("value", GOOD_NUMBERS, ids=repr)
def test_real_numbers_are_accepted(value):
    args = x3()
    expected = sdpa.attention(**args, scale=float(value), softcap=float(value) + 1)
    assert np.array_equal(sdpa.attention(**args, scale=value, softcap=value + 1), expected)
    out = sdpa.attention(**args, dropout_p=value if float(value) < 1 else 0, seed=1)
    assert out.shape == (3, 4, 2)


def test_a_number_too_large_for_float64():
    with pytest.raises(ValueError, match=r"^sdpa: scale is an int of 401 digits but must be "
                                         r"finite \(a float64 ends near 1.8e308\)$"):
        sdpa.attention(**x3(), scale=10**400)
    with pytest.raises(ValueError, match=r"^sdpa: softcap is an int of 310 digits but must be"):
        sdpa.attention(**x3(), softcap=-10**309)


# ---------------------------------------------------------------------------------------------
# The library's messages, named as the caller wrote the argument


def attention_call(**kwargs):
    args = x3()
    args.update(kwargs)
    return sdpa.attention(**args)


F32 = dict(query=np.ones((3, 4, 8), np.float32), key=np.ones((3, 5, 8), np.float32),
           value=np.ones((3, 5, 2), np.float32))


@pytest.mark.parametrize("kwargs, error, match", [
    # options.mask (validate.cc: CheckView, the dtype and the broadcast)
    (dict(mask=np.ones((2, 5), bool)), ValueError,
     r"^sdpa: mask.shape\[0\] is 2 but must be 1 or 4 \(q_len\) to broadcast to \[1, 3, 4, 5\]$"),
    (dict(mask=np.ones((2, 4, 5), bool)), ValueError,
     r"^sdpa: mask.shape\[0\] is 2 but must be 1 or 3 \(heads\)"),
    (dict(mask=np.ones((1, 1, 1, 4, 5), bool)), ValueError,
     r"^sdpa: mask has rank 5 but at most 4 dimensions are supported"),
    (dict(F32, mask=np.zeros((4, 5), np.complex64)), TypeError,
     r"^sdpa: mask.dtype is complex64 but must be bool \(True = attend\) or a float dtype"),
    # options.scale
    (dict(scale=np.inf), ValueError, r"^sdpa: scale is inf but must be finite"),
    # options.window
    (dict(window=(-1, 0)), ValueError, r"^sdpa: window\[0\] is -1 but must be >= 0$"),
    (dict(window=(0, -3)), ValueError, r"^sdpa: window\[1\] is -3 but must be >= 0$"),
    # options.alibi_slopes, options.softcap, options.sinks
    (dict(alibi_slopes=[1, 2]), ValueError,
     r"^sdpa: alibi_slopes has 2 values but must have one per query head \(3\)$"),
    (dict(alibi_slopes=[1, np.nan, 1]), ValueError,
     r"^sdpa: alibi_slopes\[1\] is nan but must be finite$"),
    (dict(softcap=0), ValueError, r"^sdpa: softcap is 0 but must be finite and > 0$"),
    (dict(sinks=[0, 0, np.nan]), ValueError, r"^sdpa: sinks\[2\] is nan but must be finite or"),
    (dict(sinks=[0, 0]), ValueError, r"^sdpa: sinks has 2 values but must have one per query"),
    # options.cu_seqlens_q/k (CheckOffsets and the pairing rules)
    (dict(cu_seqlens_q=[0, 4]), ValueError,
     r"^sdpa: cu_seqlens_q is set but cu_seqlens_k is not; packed sequences need both$"),
    (dict(cu_seqlens_k=[0, 5]), ValueError, r"^sdpa: cu_seqlens_k is set but cu_seqlens_q is"),
    (dict(cu_seqlens_q=[0, 2, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q has 3 values but cu_seqlens_k has 2; both are sequences \+ 1$"),
    (dict(cu_seqlens_q=[4], cu_seqlens_k=[5]), ValueError,
     r"^sdpa: cu_seqlens_q has 1 values but must have at least 2"),
    (dict(cu_seqlens_q=[1, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: cu_seqlens_q\[0\] is 1 but must be 0$"),
    (dict(cu_seqlens_q=[0, 3, 2, 4], cu_seqlens_k=[0, 1, 2, 5]), ValueError,
     r"^sdpa: cu_seqlens_q\[2\] is 2, below cu_seqlens_q\[1\] = 3; offsets must not decrease$"),
    (dict(cu_seqlens_q=[0, 4], cu_seqlens_k=[0, 6]), ValueError,
     r"^sdpa: cu_seqlens_k\[1\] is 6 but must be 5 \(kv_len\)$"),
    (dict(query=np.ones((2, 3, 4, 8)), key=np.ones((2, 3, 5, 8)), value=np.ones((2, 3, 5, 2)),
          cu_seqlens_q=[0, 4], cu_seqlens_k=[0, 5]), ValueError,
     r"^sdpa: query.shape batch is 2 but must be 1 with cu_seqlens_q \(sequences are packed"),
    # options.dropout_p
    (dict(dropout_p=1.25), ValueError, r"^sdpa: dropout_p is 1.25 but must be in \[0, 1\]$"),
    # operands (their names are the Python arguments already)
    (dict(key=np.ones((3, 5, 7))), ValueError,
     r"^sdpa: key.shape\[2\] \(head_dim\) is 7 but query.shape\[2\] is 8$"),
])
def test_library_messages_name_the_python_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        attention_call(**kwargs)
    explain_kwargs = {k: v for k, v in kwargs.items()}
    args = x3()
    args.update(explain_kwargs)
    with pytest.raises(error, match=match):
        sdpa.explain(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(attn_mask=np.ones((3, 4), bool)), ValueError,
     r"^sdpa: attn_mask.shape\[1\] is 4 but must be 1 or 2 \(kv_len\)"),
    (dict(attn_mask=np.ones((5, 2), bool)), ValueError,
     r"^sdpa: attn_mask.shape\[0\] is 5 but must be 1 or 3 \(q_len\)"),
    (dict(query=np.ones((3, 8), np.float32), key=np.ones((2, 8), np.float32),
          value=np.ones((2, 8), np.float32), attn_mask=np.zeros((3, 2), np.complex64)), TypeError,
     r"^sdpa: attn_mask.dtype is complex64 but must be bool \(True = attend\) or a float"),
    (dict(scale=np.nan), ValueError, r"^sdpa: scale is nan but must be finite"),
    (dict(dropout_p=-0.5), ValueError, r"^sdpa: dropout_p is -0.5 but must be in \[0, 1\]"),
    (dict(window=(-2, None)), ValueError, r"^sdpa: window\[0\] is -2 but must be >= 0"),
    (dict(query=np.ones((2, 3, 8)), key=np.ones((2, 2, 8)), value=np.ones((2, 2, 8)),
          sinks=[0, 0, 0]), ValueError,
     r"^sdpa: sinks has 3 values but must have one per query head \(2\)"),
    (dict(query=np.ones((2, 3, 8)), key=np.ones((2, 2, 8)), value=np.ones((2, 2, 8)),
          alibi_slopes=[0, np.inf]), ValueError, r"^sdpa: alibi_slopes\[1\] is inf but must be"),
])
def test_sdpa_messages_name_attn_mask(kwargs, error, match):
    args = dict(query=np.ones((3, 8)), key=np.ones((2, 8)), value=np.ones((2, 8)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sdpa.scaled_dot_product_attention(**args)


def test_sdpa_mask_messages_index_the_callers_mask_with_many_batch_dims():
    """Five batch dims are merged into two for the library; the message still indexes the
    caller's (rank-3) mask."""
    q = np.ones((2, 3, 2, 2, 2, 4, 8))
    with pytest.raises(ValueError, match=r"^sdpa: attn_mask.shape\[2\] is 3 but must be 1 or 4 "
                                         r"\(kv_len\)"):
        sdpa.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((2, 4, 3), bool))
    with pytest.raises(ValueError, match=r"^sdpa: attn_mask.shape\[1\] is 2 but must be 1 or 4 "
                                         r"\(q_len\)"):
        sdpa.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((2, 2, 4), bool))


def backward_call(**kwargs):
    q, k, v = np.ones((3, 4, 8)), np.ones((3, 5, 8)), np.ones((3, 5, 2))
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    args = dict(grad_out=np.ones_like(out), query=q, key=k, value=v, out=out, lse=lse)
    args.update(kwargs)
    return sdpa.attention_backward(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mask=np.ones((2, 5), bool)), ValueError, r"^sdpa: mask.shape\[0\] is 2 but must be 1"),
    (dict(scale=-np.inf), ValueError, r"^sdpa: scale is -inf but must be finite"),
    (dict(window=(None, -1)), ValueError, r"^sdpa: window\[1\] is -1 but must be >= 0"),
    (dict(sinks=[1, 2]), ValueError, r"^sdpa: sinks has 2 values but must have one per query"),
    (dict(softcap=-1), ValueError, r"^sdpa: softcap is -1 but must be finite and > 0"),
    (dict(lse=np.ones((3, 5))), ValueError, r"^sdpa: lse.shape is \[3, 5\] but must be \[3, 4\]"),
    (dict(dropout_p=2, seed=1), ValueError, r"^sdpa: dropout_p is 2 but must be in \[0, 1\]"),
    (dict(return_lse=True), TypeError, r"unexpected keyword argument 'return_lse'"),
])
def test_backward_messages(kwargs, error, match):
    with pytest.raises(error, match=match):
        backward_call(**kwargs)


@pytest.mark.parametrize("args, error, match", [
    (([[1.0, 2.0]], [[1.0]], [[1.0]]), ValueError,
     r"^sdpa: K.shape\[1\] \(head_dim\) is 1 but Q.shape\[1\] is 2$"),
    (([[1.0]], [[1.0], [2.0]], [[1.0]]), ValueError,
     r"^sdpa: V.shape\[0\] \(kv_len\) is 1 but K.shape\[0\] is 2$"),
    ((np.ones((1, 1), np.float32), [[1.0]], [[1.0]]), TypeError,
     r"^sdpa: K.dtype is float64 but Q.dtype is float32; float64 needs query, key and "
     r"value all float64$"),
])
def test_self_attention_messages_name_q_k_v(args, error, match):
    with pytest.raises(error, match=match):
        sdpa.self_attention(*args)


# ---------------------------------------------------------------------------------------------
# Other raw errors


@pytest.mark.parametrize("values, match", [
    ([0, 2**63], r"^sdpa: cu_seqlens_k\[1\] is 9223372036854775808 but must be in \[0, 2\*\*63\)"),
    ([0, 2**64], r"^sdpa: cu_seqlens_k\[1\] is 18446744073709551616 but must be in \[0, 2\*\*63\)"),
    ([-2**63 - 1, 5], r"^sdpa: cu_seqlens_k\[0\] is -9223372036854775809 but must be in"),
    (np.array([0, 2**64 - 1], np.uint64),
     r"^sdpa: cu_seqlens_k\[1\] is 18446744073709551615 but must be in \[0, 2\*\*63\)"),
])
def test_cu_seqlens_overflow_is_a_value_error(values, match):
    """Python ints beyond int64 made numpy pick float64 or object, reported as a dtype error."""
    with pytest.raises(ValueError, match=match):
        attention_call(query=np.ones((3, 4, 8)), cu_seqlens_q=[0, 4], cu_seqlens_k=values)


@pytest.mark.parametrize("window", [{0: 1, 2: 3}, {1, 2}], ids=["dict", "set"])
def test_window_must_be_a_sequence(window):
    with pytest.raises(TypeError, match=r"^sdpa: window is .* but must be None or a pair"):
        attention_call(window=window)


def test_backward_with_sinks_always_returns_four_gradients():
    """With zero heads, sinks=[] is one sink per head: grad_sinks is there, shaped (0,)."""
    empty = np.ones((0, 4, 8))
    out, lse = sdpa.attention(empty, empty, empty, sinks=[], return_lse=True)
    grads = sdpa.attention_backward(out, empty, empty, empty, out, lse, sinks=[])
    assert len(grads) == 4
    assert grads[3].shape == (0,) and grads[3].dtype == np.float64
    assert len(sdpa.attention_backward(out, empty, empty, empty, out, lse)) == 3
    grads = sdpa.attention_backward(out.astype(np.float32), *(a.astype(np.float32) for a in (
        empty, empty, empty, out, lse)), sinks=np.zeros(0))
    assert len(grads) == 4 and grads[3].dtype == np.float32


@needs_torch
def test_torch_sinks_with_zero_heads_get_a_gradient():
    q = torch.ones(0, 4, 8, dtype=torch.float64, requires_grad=True)
    sinks = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    sdpa.torch.attention(q, q, q, sinks=sinks).sum().backward()
    assert sinks.grad.shape == (0,)


# ---------------------------------------------------------------------------------------------
# set_num_threads


@pytest.mark.parametrize("n, error, match", [
    (-1, ValueError, r"^sdpa: n is -1 but must be in \[0, 1024\] \(0 = all hardware threads\)$"),
    (1025, ValueError, r"^sdpa: n is 1025 but must be in \[0, 1024\]"),
    (2**32, ValueError, r"^sdpa: n is 4294967296 but must be in \[0, 1024\]"),
    (np.int64(-5), ValueError, r"^sdpa: n is -5 but must be in \[0, 1024\]"),
    (True, TypeError, r"^sdpa: n is True but must be an int in \[0, 1024\]"),
    (np.True_, TypeError, r"^sdpa: n is np.True_ but must be an int"),
    (1.5, TypeError, r"^sdpa: n is 1.5 but must be an int"),
    (2.0, TypeError, r"^sdpa: n is 2.0 but must be an int"),
    ("2", TypeError, r"^sdpa: n is '2' but must be an int"),
    (None, TypeError, r"^sdpa: n is None but must be an int"),
])
def test_set_num_threads_refuses(n, error, match):
    before = sdpa.get_num_threads()
    with pytest.raises(error, match=match):
        sdpa.set_num_threads(n)
    assert sdpa.get_num_threads() == before  # a refused value changes nothing


def test_set_num_threads_accepts_the_range():
    try:
        for n in (1, np.int32(2), 1024):
            sdpa.set_num_threads(n)
            assert sdpa.get_num_threads() == int(n)
    finally:
        sdpa.set_num_threads(0)


# ---------------------------------------------------------------------------------------------
# A sweep: bad inputs of every kind on every public function


def _bad_calls():
    q, k, v = np.ones((3, 4, 8)), np.ones((3, 5, 8)), np.ones((3, 5, 2))
    out, lse = sdpa.attention(q, k, v, return_lse=True)
    bad = dict(mask=np.ones((2, 5), bool), scale="x", causal=1, backend="gpu", window=(-1, 0),
               alibi_slopes=[1, 2], softcap=True, sinks=[np.inf, 0, 0], cu_seqlens_q=[0, 4],
               dropout_p=1.5, seed=-1)
    calls = []
    for name, value in bad.items():
        calls.append((f"attention {name}", lambda n=name, x=value: sdpa.attention(q, k, v,
                                                                                   **{n: x})))
        calls.append((f"explain {name}", lambda n=name, x=value: sdpa.explain(q, k, v, **{n: x})))
        calls.append((f"backward {name}", lambda n=name, x=value: sdpa.attention_backward(
            out, q, k, v, out, lse, **{n: x})))
        if name not in ("mask", "causal", "backend", "cu_seqlens_q"):
            calls.append((f"sdpa {name}", lambda n=name, x=value: (
                sdpa.scaled_dot_product_attention(q, k, v, **{n: x}))))
        if torch is not None:
            t = torch.ones(3, 4, 8, requires_grad=True)
            calls.append((f"torch {name}", lambda n=name, x=value: sdpa.torch.attention(
                t, t, t, **{n: x})))
    for operand in ("query", "key", "value"):
        for value in (None, "abc", np.ones((1, 1, 1, 1, 1)), np.ones(8), np.ones((3, 4, 7)),
                      np.ones((3, 4, 8), np.float16)):
            args = {"query": q, "key": k, "value": v, operand: value}
            calls.append((f"attention {operand}={value!r}"[:60],
                          lambda a=args: sdpa.attention(**a)))
            calls.append((f"sdpa {operand}", lambda a=args: sdpa.scaled_dot_product_attention(
                **a)))
    calls.append(("sdpa attn_mask", lambda: sdpa.scaled_dot_product_attention(
        q, k, v, attn_mask=np.ones((4, 4), bool))))
    calls.append(("sdpa attn_mask dtype", lambda: sdpa.scaled_dot_product_attention(
        q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
        attn_mask=np.ones((4, 5), np.complex64))))
    calls.append(("sdpa is_causal", lambda: sdpa.scaled_dot_product_attention(
        q, k, v, is_causal="yes")))
    calls.append(("sdpa enable_gqa", lambda: sdpa.scaled_dot_product_attention(
        q, k, v, enable_gqa=None)))
    calls.append(("attention return_lse", lambda: sdpa.attention(q, k, v, return_lse="yes")))
    calls.append(("backward lse", lambda: sdpa.attention_backward(out, q, k, v, out, lse[:1])))
    calls.append(("self_attention", lambda: sdpa.self_attention(q[0], k[0, :, :2], v[0])))
    calls.append(("self_attention rank", lambda: sdpa.self_attention(q, k, v)))
    calls.append(("compute_qkv", lambda: sdpa.compute_qkv(q[0], q[0], q[0], q[0])))
    calls.append(("compute_qkv dtype", lambda: sdpa.compute_qkv(q[0], 1j * q[0], q[0], q[0])))
    for n in (-1, 5000, 1.5, True, "1"):
        calls.append((f"set_num_threads {n!r}", lambda n=n: sdpa.set_num_threads(n)))
    return calls


def test_every_error_names_a_python_argument():
    failures = []
    for label, call in _bad_calls():
        try:
            call()
        except (ValueError, TypeError) as e:
            message = str(e)
            if (not message.startswith("sdpa: ") or "options." in message
                    or "num_threads" in message):
                failures.append(f"{label}: {type(e).__name__}: {message}")
        except Exception as e:  # noqa: BLE001 - any other type is a failure to report
            failures.append(f"{label}: raw {type(e).__name__}: {e}")
        else:
            failures.append(f"{label}: no error")
    sdpa.set_num_threads(0)
    assert not failures, "\n".join(failures)
