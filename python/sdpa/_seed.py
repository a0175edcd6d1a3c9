"""The two functions of the task that started the project (shared/seed), computed in C++."""

from typing import Tuple

import numpy.typing as npt

from . import _sdpa
from ._arrays import as_operand
from ._attention import _public
from ._errors import python_names
from ._typing import FloatArray


@_public
@python_names({"query": "Q", "key": "K", "value": "V"})
def self_attention(Q: npt.ArrayLike, K: npt.ArrayLike, V: npt.ArrayLike) -> FloatArray:
    """Scaled dot-product self-attention: ``softmax(Q @ K.T / sqrt(d_k)) @ V``, row by row.

    Args:
        Q: query matrix ``(seq_len, d_k)``.
        K: key matrix ``(seq_len_kv, d_k)``.
        V: value matrix ``(seq_len_kv, d_v)``.

    Returns:
        The attention output ``(seq_len, d_v)``: float32 for float32 input, float64 for float64,
        ints, bools and lists.

    The seed's example:

    >>> import numpy as np, sdpa
    >>> Q = np.array([[1, 0], [0, 1]])
    >>> K = np.array([[1, 0], [0, 1]])
    >>> V = np.array([[1, 2], [3, 4]])
    >>> sdpa.self_attention(Q, K, V).round(6)
    array([[1.660477, 2.660477],
           [2.339523, 3.339523]])
    """
    return _sdpa.self_attention(as_operand("Q", Q), as_operand("K", K), as_operand("V", V))


@_public
@python_names()
def compute_qkv(X: npt.ArrayLike, W_q: npt.ArrayLike, W_k: npt.ArrayLike,
                W_v: npt.ArrayLike) -> Tuple[FloatArray, FloatArray, FloatArray]:
    """Query, key and value matrices ``(X @ W_q, X @ W_k, X @ W_v)`` from the input ``X``.

    Args:
        X: input ``(seq_len, d_model)``.
        W_q, W_k, W_v: weights ``(d_model, d_k)``, ``(d_model, d_k)``, ``(d_model, d_v)``.

    Returns:
        The tuple ``(Q, K, V)``, accumulated in float64 and returned in the inputs' dtype (one
        float dtype for all four; ints, bools and lists become float64).

    >>> import numpy as np, sdpa
    >>> X = np.array([[1, 2], [3, 4]])
    >>> Q, K, V = sdpa.compute_qkv(X, np.eye(2), np.ones((2, 2)), [[1, 0, 1], [0, 1, 1]])
    >>> Q
    array([[1., 2.],
           [3., 4.]])
    >>> V
    array([[1., 2., 3.],
           [3., 4., 7.]])
    >>> sdpa.self_attention(Q, K, V).shape
    (2, 3)
    """
    return _sdpa.compute_qkv(as_operand("X", X), as_operand("W_q", W_q), as_operand("W_k", W_k),
                             as_operand("W_v", W_v))
