"""A small program typed against sdpa's public API; tests/python/test_typing.py checks it with
`mypy --strict` and runs it. It shows the types a caller sees: array-likes in, NDArrays of a
float dtype out, (out, lse) with return_lse=True, and the options' literal names."""

from typing import Any, Tuple

import numpy as np
import numpy.typing as npt

import sdpa

FloatArray = npt.NDArray[np.floating[Any]]


def causal_step(q: FloatArray, k: FloatArray, v: FloatArray) -> Tuple[FloatArray, FloatArray]:
    """Attention of the last query row over every key, with its log-sum-exp."""
    out, lse = sdpa.attention(q[..., -1:, :], k, v, causal="bottom_right", return_lse=True)
    return out, lse


def main() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 16, 8))
    k = rng.standard_normal((2, 2, 16, 8))
    v = rng.standard_normal((2, 2, 16, 8))

    out: FloatArray = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                        scale=0.5, window=(4, None))
    step, lse = causal_step(q, k, v)
    assert np.allclose(out[..., -1:, :], sdpa.attention(q[..., -1:, :], k, v, scale=0.5,
                                                        causal="bottom_right", window=(4, 0)))
    assert step.shape == (2, 4, 1, 8) and lse.shape == (2, 4, 1)

    sinks = np.zeros(4)
    out, lse = sdpa.attention(q, k, v, causal="top_left", sinks=sinks, dropout_p=0.1, seed=7,
                              return_lse=True, backend="cpu")
    grads = sdpa.attention_backward(np.ones_like(out), q, k, v, out, lse, causal="top_left",
                                    sinks=sinks, dropout_p=0.1, seed=7)
    grad_q, grad_k, grad_v, grad_sinks = grads
    assert grad_q.shape == q.shape and grad_sinks.shape == (4,)

    plan: str = sdpa.explain(q, k, v, mask=np.ones((16, 16), dtype=bool), backend=None)
    assert plan.startswith("sdpa plan:")

    Q, K, V = sdpa.compute_qkv(q[0, 0], np.eye(8), np.eye(8), np.eye(8))
    assert sdpa.self_attention(Q, K, V).shape == (16, 8)

    threads: int = sdpa.get_num_threads()
    sdpa.set_num_threads(1)
    sdpa.set_num_threads(0)
    assert threads >= 1 and isinstance(sdpa.__version__, str)

    k_cache = np.zeros((2, 2, 32, 8), dtype=np.float32)  # a KV cache, appended to in place
    v_cache = np.zeros_like(k_cache)
    lens = np.array([16, 3], dtype=np.int32)
    q32, k32, v32 = (a[:, :, :1].astype(np.float32) for a in (q, k, v))
    decoded: FloatArray = sdpa.attention_with_kvcache(q32, k_cache, v_cache, k32, v32,
                                                      cache_seqlens=lens, window=(8, 0))
    decoded, lse = sdpa.attention_with_kvcache(q32, k_cache, v_cache, cache_seqlens=lens + 1,
                                               is_causal=False, return_lse=True)
    assert decoded.shape == (2, 4, 1, 8) and lse.shape == (2, 4, 1)


if __name__ == "__main__":
    main()
