"""merge_partials: the log-sum-exp merge of attention over disjoint key sets (sdpa/merge.h)."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _sdpa
from ._arrays import to_ndarray
from ._errors import python_names
from ._typing import FloatArray

_Partials = Union[npt.ArrayLike, Sequence[npt.ArrayLike]]


def _as_list(name: str, x: _Partials) -> list:
    """The partials as a list of float arrays: a sequence of arrays, or one array whose first
    dimension indexes them (its slices are views, never copies)."""
    items = list(x) if isinstance(x, (list, tuple)) else list(to_ndarray(name, x))
    result = []
    for s, item in enumerate(items):
        a = to_ndarray(f"{name}[{s}]", item)
        if a.dtype.kind in "biu":
            a = a.astype(np.float64)
        result.append(a)
    return result


@python_names()
def merge_partials(outs: _Partials, lses: _Partials) -> Tuple[FloatArray, FloatArray]:
    """Merges partial attention results over disjoint key sets into (out, lse).

    ``outs``: S partial outputs ``(..., L, Dv)`` (a list, or one array ``(S, ..., L, Dv)``);
    ``lses``: their log-sum-exps ``(..., L)`` (a list, or ``(S, ..., L)``), as ``attention(...,
    return_lse=True)`` returns them for each key set. ``..`` is at most 2 dimensions (batch,
    heads). float32 partials take float32 lses and are merged in float32; float64 in float64::

        M = max_s lse_s
        out = sum_s exp(lse_s - M) * out_s / sum_s exp(lse_s - M)
        lse = M + log(sum_s exp(lse_s - M))

    An empty partial (lse = -inf) is ignored, whatever its out holds; a row whose partials are
    all empty gives out = 0 and lse = -inf, like attention on a row with no visible key.

    >>> import numpy as np, sdpa
    >>> q, k, v = np.ones((1, 4)), np.eye(4), np.arange(16.0).reshape(4, 4)
    >>> a = sdpa.attention(q, k[:1], v[:1], return_lse=True)
    >>> b = sdpa.attention(q, k[1:], v[1:], return_lse=True)
    >>> out, lse = sdpa.merge_partials([a[0], b[0]], [a[1], b[1]])
    >>> bool(np.allclose(out, sdpa.attention(q, k, v)))
    True
    """
    out_list, lse_list = _as_list("outs", outs), _as_list("lses", lses)
    out, lse = _sdpa.merge_partials(out_list, lse_list)
    return out, lse


merge_partials.__module__ = "sdpa"
