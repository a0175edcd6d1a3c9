"""The attention functions: PyTorch's scaled_dot_product_attention, the engine's attention() and
its gradients, attention_backward()."""

from __future__ import annotations  # the annotations name types only type checkers import

import operator
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, SupportsIndex, Tuple, TypeVar
from typing import Union, overload

import numpy as np
import numpy.typing as npt

from . import _sdpa
from ._arrays import as_mask, as_operand, from_library, library_array
from ._broadcast import to_engine
from ._errors import python_names
from ._options import boolean, make_options, with_variants
from ._typing import Backend, Bool, Causal, FloatArray, Real, SdpaVariants, Seed, Variants

if TYPE_CHECKING:
    from typing_extensions import Unpack

_F = TypeVar("_F", bound=Callable[..., Any])

# The most threads sdpa::SetNumThreads takes (far above the CPUs this library runs on: larger
# values are mistakes). Checked here too, so that the message names n.
_MAX_THREADS = 1024


def _public(function: _F) -> _F:
    """Shows the function as sdpa.<name> (help(), reprs, doctest discovery)."""
    function.__module__ = "sdpa"
    return function


def _operands(query, key, value, mask):
    q = as_operand("query", query)
    k = as_operand("key", key)
    v = as_operand("value", value)
    m = None if mask is None else as_mask("mask", mask, q.dtype)
    return q, k, v, m


@_public
@python_names({"options.mask": "attn_mask", "options.causal": "is_causal"})
@with_variants(omit=("cu_seqlens_q", "cu_seqlens_k"))
def scaled_dot_product_attention(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike,
                                 attn_mask: Optional[npt.ArrayLike] = None, dropout_p: Real = 0.0,
                                 is_causal: Bool = False, scale: Optional[Real] = None,
                                 enable_gqa: Bool = False, *, seed: Optional[Seed] = None,
                                 **variants: Unpack[SdpaVariants]) -> FloatArray:
    """PyTorch's ``torch.nn.functional.scaled_dot_product_attention`` on numpy arrays.

    ``out = softmax(scale * query @ key.T + bias) @ value`` for every batch index, with

    - ``query`` ``(..., L, E)``, ``key`` ``(..., S, E)``, ``value`` ``(..., S, Ev)``; the leading
      (batch) dims broadcast like numpy/PyTorch; the result is ``(..., L, Ev)``.
    - ``attn_mask``: ``None``, bool (True = attend) or float (added to the scaled scores, ``-inf``
      removes a key), broadcastable to the scores ``(..., L, S)``, whose batch dims are those of
      query and key broadcast (the mask may not add batch dims, as in PyTorch).
    - ``is_causal``: query ``i`` sees key ``j`` iff ``j <= i`` (top-left aligned, as in PyTorch).
      Giving both ``attn_mask`` and ``is_causal=True`` is an error, as in PyTorch.
    - ``scale``: default ``1 / sqrt(E)``.
    - ``enable_gqa``: grouped-query attention on dim -3: key/value may have fewer heads than query
      (a divisor); query head ``h`` uses kv head ``h // (Hq // Hkv)``. Without it, head counts
      must be equal or 1, like any batch dim.
    - ``dropout_p``: each attention weight is zeroed with this probability and the others are
      scaled by ``1 / (1 - dropout_p)``, as in PyTorch (always: there is no training flag here
      either). Which ones is decided by Philox4x32-10 from keyword-only ``seed`` (an int in
      ``[0, 2**64)``; ``None`` draws a fresh one from ``secrets.randbits(64)``). The random
      numbers are not PyTorch's: the same seed gives the same result here, not there.

    Keyword-only extras (``attention`` describes them): ``window=(left, right)`` (aligned
    top-left with ``is_causal=True``, else bottom-right), ``alibi_slopes``, ``softcap`` and
    ``sinks``, per head of dim -3 of the result.

    float32 in gives float32 out, float64 gives float64, ints and bools compute in float64;
    float16 and bfloat16 (``ml_dtypes.bfloat16``) compute in float32 and give their own dtype
    (key and value share one; the query's may differ, float64 goes with float64 only).
    A row that sees no key gives zeros (PyTorch 2.5+ does the same). Inputs are read in place
    when their last dim is contiguous (views, broadcasts, slices of a packed QKV buffer); they are
    never modified. Objects with ``__dlpack__`` (PyTorch CPU tensors) are accepted; the result is
    always a numpy array.

    Raises ValueError for shapes and values the library refuses and TypeError for unsupported
    dtypes and argument types (``is_causal`` and ``enable_gqa`` are bool or numpy.bool_,
    ``scale`` and ``dropout_p`` real numbers); the message names the argument as written here
    (``attn_mask``, ``window[0]``, ...), the expected and the actual value.

    >>> import numpy as np, sdpa
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 8, 16, 32), dtype=np.float32)  # (batch, heads, L, E)
    >>> k = rng.standard_normal((2, 2, 16, 32), dtype=np.float32)  # 2 kv heads serve 8
    >>> v = rng.standard_normal((2, 2, 16, 32), dtype=np.float32)
    >>> out = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    >>> out.shape, out.dtype
    ((2, 8, 16, 32), dtype('float32'))

    Query row 0 sees only key 0, so it is value row 0 of its kv head (heads 4..7 use kv head 1):

    >>> bool(np.allclose(out[:, 5, 0], v[:, 1, 0]))
    True

    A bool mask broadcast over batch and heads:

    >>> keep = np.tril(np.ones((16, 16), dtype=bool))
    >>> masked = sdpa.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    >>> bool(np.allclose(masked, out))
    True
    """
    is_causal = boolean("is_causal", is_causal)
    enable_gqa = boolean("enable_gqa", enable_gqa)
    if attn_mask is not None and is_causal:
        raise ValueError(
            "sdpa: attn_mask is given and is_causal is True; PyTorch refuses this combination "
            "too. Put the causal rule into attn_mask, or use "
            "sdpa.attention(..., mask=..., causal='top_left')")
    q, k, v, m = _operands(query, key, value, None)
    m = None if attn_mask is None else as_mask("attn_mask", attn_mask, q.dtype)
    per_head = variants.get("alibi_slopes") is not None or variants.get("sinks") is not None
    q, k, v, m, out_shape = to_engine(q, k, v, m, enable_gqa, heads_last=per_head)
    options = make_options(q, mask=m, causal="top_left" if is_causal else None, scale=scale,
                           dropout_p=dropout_p, seed=seed, **variants)
    return forward((q, k, v), options, False).reshape(out_shape)


@overload
def attention(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike, *,
              mask: Optional[npt.ArrayLike] = ..., causal: Causal = ...,
              scale: Optional[Real] = ..., return_lse: Literal[False] = ...,
              backend: Backend = ..., **variants: Unpack[Variants]) -> FloatArray: ...
@overload
def attention(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike, *,
              mask: Optional[npt.ArrayLike] = ..., causal: Causal = ...,
              scale: Optional[Real] = ..., return_lse: Literal[True],
              backend: Backend = ...,
              **variants: Unpack[Variants]) -> Tuple[FloatArray, FloatArray]: ...
@overload
def attention(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike, *,
              mask: Optional[npt.ArrayLike] = ..., causal: Causal = ...,
              scale: Optional[Real] = ..., return_lse: Bool = ..., backend: Backend = ...,
              **variants: Unpack[Variants]) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]:
    ...


@_public
@python_names()
@with_variants()
def attention(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike, *,
              mask: Optional[npt.ArrayLike] = None, causal: Causal = None,
              scale: Optional[Real] = None, return_lse: Bool = False, backend: Backend = None,
              **variants: Unpack[Variants]) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]:
    """The engine's attention in ``(batch, heads, seq, dim)`` layout; returns ``out`` or
    ``(out, lse)``.

    - ``query`` ``(B, H, Lq, D)``, ``key`` ``(B, Hkv, Lkv, D)``, ``value`` ``(B, Hkv, Lkv, Dv)``,
      all of one rank: 4, or 3 ``(heads, seq, dim)``, or 2 ``(seq, dim)``. No batch broadcasting
      (use ``scaled_dot_product_attention`` for that). GQA/MQA: ``H % Hkv == 0``, query head ``h``
      reads kv head ``h // (H // Hkv)``.
    - ``mask``: bool (True = attend) or float (added to the scaled scores), broadcastable to
      ``(B, H, Lq, Lkv)``.
    - ``causal``: ``None``; ``"top_left"``: key ``j`` visible to query ``i`` iff ``j <= i``;
      ``"bottom_right"``: iff ``j <= i + Lkv - Lq`` (the last query sees every key, as in
      FlashAttention and KV-cache decoding). Combines with ``mask``.
    - ``scale``: default ``1 / sqrt(D)``.
    - ``return_lse``: also return the log-sum-exp of each row's scaled, masked scores,
      shaped ``(B, H, Lq)`` (one rank below ``query``), in the query's dtype (float32 for a
      float16 or bfloat16 query).
    - ``backend``: ``None`` or ``"auto"`` (the ``SDPA_BACKEND`` environment variable if set, else
      the CPU engine), ``"cpu"``, or ``"reference"`` (the plain float64-accumulating oracle: slow,
      for checks and benchmarks).

    Variants (docs/python.md, "Variants"), applied to each score in this order:
    ``s = scale * q.k``, then ``softcap`` (``s -> softcap * tanh(s / softcap)``), then ALiBi
    (``alibi_slopes``, one per query head: ``- slope[h] * |i + Lkv - Lq - j|``), then the additive
    mask; keys outside ``causal``, ``window``, the sequence or the bool mask are removed; the
    softmax's denominator includes ``exp(sinks[h])``; then dropout.

    - ``window``: ``(left, right)``, ``None`` for an unbounded side: query ``i`` sees keys
      ``diag - left <= j <= diag + right``, ``diag = i`` with ``causal="top_left"``, else
      ``i + Lkv - Lq``. Combines with ``causal`` and ``mask``.
    - ``alibi_slopes``, ``sinks``: array-likes of one real number per query head (``sinks`` may be
      ``-inf``: no sink); ``lse`` includes the sink, and a row with no visible key then has
      ``lse = sinks[h]``.
    - ``cu_seqlens_q``, ``cu_seqlens_k``: integer offsets of packed sequences (FlashAttention's
      varlen): with ``query`` ``(H, total_q, D)`` or ``(1, H, total_q, D)``, sequence ``s`` is
      query rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]`` and keys
      ``cu_seqlens_k[s]:cu_seqlens_k[s+1]``, and attends within itself; causal, window and ALiBi
      use positions within the sequence, ``mask`` packed positions. A FlashAttention-packed
      ``(total, H, D)`` array is ``x.transpose(1, 0, 2)``, a view.
    - ``dropout_p``: zeroes each attention weight with this probability and scales the others by
      ``1 / (1 - dropout_p)``; ``lse`` is that of the weights before dropout. ``seed``: an int in
      ``[0, 2**64)`` choosing the Philox4x32-10 stream (the same seed gives the same result on
      any backend and thread count); ``None`` draws a fresh one from ``secrets.randbits(64)``,
      so pass a seed to reproduce a call or to compute its backward.

    A row with no visible key gives ``out = 0`` and ``lse = -inf`` (its sink with ``sinks``).
    Dtype and layout rules are those of ``scaled_dot_product_attention``.

    >>> import numpy as np, sdpa
    >>> q, k = np.zeros((2, 4)), np.zeros((3, 4))
    >>> v = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> out, lse = sdpa.attention(q, k, v, mask=[[True, True, False], [False, False, False]],
    ...                           return_lse=True)
    >>> out
    array([[2., 3.],
           [0., 0.]])
    >>> print(lse.round(6))
    [0.693147     -inf]

    Bottom-right causal with fewer queries than keys (decoding with a KV cache): the last query
    sees every key, the first sees all but the last one.

    >>> out = sdpa.attention(np.zeros((2, 4)), k, v, causal="bottom_right")
    >>> out
    array([[2., 3.],
           [3., 4.]])

    A window of width 0 on both sides: each query sees only the key on its diagonal.

    >>> sdpa.attention(np.zeros((3, 4)), k, v, window=(0, 0))
    array([[1., 2.],
           [3., 4.],
           [5., 6.]])

    A sink of logit 0 (one head) weighs as much as one more key of score 0, with no value: row 0
    gives a third of its weight to it; row 1 sees no key, so out = 0 and lse = the sink.

    >>> out, lse = sdpa.attention(q, k, v, mask=[[True, True, False], [False, False, False]],
    ...                           sinks=[0.0], return_lse=True)
    >>> out
    array([[1.33333333, 2.        ],
           [0.        , 0.        ]])
    >>> print(lse.round(6))
    [1.098612 0.      ]
    """
    q, k, v, m = _operands(query, key, value, mask)
    options = make_options(q, mask=m, causal=causal, scale=scale, backend=backend, **variants)
    return forward((q, k, v), options, boolean("return_lse", return_lse))


@_public
@python_names()
@with_variants()
def attention_backward(grad_out: npt.ArrayLike, query: npt.ArrayLike, key: npt.ArrayLike,
                       value: npt.ArrayLike, out: npt.ArrayLike, lse: npt.ArrayLike, *,
                       mask: Optional[npt.ArrayLike] = None, causal: Causal = None,
                       scale: Optional[Real] = None, backend: Backend = None,
                       **variants: Unpack[Variants]) -> Tuple[FloatArray, ...]:
    """Gradients of ``attention``: returns ``(grad_query, grad_key, grad_value)``, the
    derivatives of a loss ``L`` with respect to ``query``, ``key`` and ``value`` given
    ``grad_out = dL/d(out)``, and ``grad_sinks`` (shaped ``(H,)``, summed over batch and rows)
    after them when ``sinks`` is given.

    - ``query``, ``key``, ``value`` and every keyword: those of the forward call
      ``out, lse = attention(query, key, value, ..., return_lse=True)``, with the same shapes
      and rules. With ``dropout_p > 0``, ``seed`` must be the forward's (``None`` is a
      ValueError): the backward regenerates the same dropout mask from it.
    - ``out`` ``(B, H, Lq, Dv)`` and ``lse`` ``(B, H, Lq)``: that call's results (the backward
      recomputes the attention weights from ``lse`` instead of storing them).
    - ``grad_out``: shaped like ``out``.

    The results have the shapes and dtypes of ``query``, ``key`` and ``value`` (``out`` and
    ``grad_out`` may be any of float32, float16 and bfloat16 in a 16-bit call). With
    GQA/MQA, ``grad_key`` and ``grad_value`` sum over the query heads that share a kv head. A row
    with no visible key contributes nothing (its ``grad_query`` row is 0). The mask gets no
    gradient. Results do not depend on the thread count (bitwise).

    >>> import numpy as np, sdpa
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 4, 8)) for _ in range(3))  # (heads, seq, dim)
    >>> out, lse = sdpa.attention(q, k, v, causal="top_left", return_lse=True)
    >>> grad_out = np.ones_like(out)  # L = out.sum()
    >>> dq, dk, dv = sdpa.attention_backward(grad_out, q, k, v, out, lse, causal="top_left")
    >>> dq.shape, dk.shape, dv.shape
    ((2, 4, 8), (2, 4, 8), (2, 4, 8))

    Each query row's weights sum to 1, so with ``grad_out`` all ones ``grad_value`` sums to the
    number of query rows; query row 0 sees only key 0, so its weight is 1 whatever ``q[:, 0]``
    and its ``grad_query`` is 0 up to rounding (``dP - delta`` of two sums in different orders):

    >>> dv.sum(axis=1)[:, 0]
    array([4., 4.])
    >>> bool(np.abs(dq[:, 0]).max() < 1e-14 * np.abs(dq).max())
    True
    """
    dout = as_operand("grad_out", grad_out)
    q = as_operand("query", query)
    k = as_operand("key", key)
    v = as_operand("value", value)
    o = as_operand("out", out)
    l = as_operand("lse", lse)
    m = None if mask is None else as_mask("mask", mask, q.dtype)
    options = make_options(q, mask=m, causal=causal, scale=scale, backend=backend,
                           backward=True, **variants)
    grads = gradients((dout, q, k, v, o, l), options, with_sinks=variants.get("sinks") is not None)
    return tuple(map(from_library, grads))


@overload
def forward(arrays: Tuple[Any, Any, Any], options: _sdpa.Options,
            return_lse: Literal[False]) -> FloatArray: ...
@overload
def forward(arrays: Tuple[Any, Any, Any], options: _sdpa.Options,
            return_lse: bool) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]: ...
def forward(arrays: Tuple[Any, Any, Any], options: _sdpa.Options,
            return_lse: bool) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]:
    """_sdpa.forward for arrays (query, key, value): out, or (out, lse) with `return_lse`, in
    their dtypes (bfloat16 crosses as its bits, see _arrays; lse is never bfloat16)."""
    query, key, value = (library_array(a) for a in arrays)
    if not return_lse:
        return from_library(_sdpa.forward(query, key, value, options, False))
    out, lse = _sdpa.forward(query, key, value, options, True)
    return from_library(out), lse


def gradients(arrays: Tuple[Any, ...], options: _sdpa.Options,
              with_sinks: bool) -> Tuple[npt.NDArray[Any], ...]:
    """_sdpa.backward for arrays (grad_out, query, key, value, out, lse), with grad_sinks after
    the three gradients whenever sinks were given: the library leaves it out when options.sinks
    is empty, which with zero query heads is one sink per head. bfloat16 gradients are returned
    as the extension gives them, as their uint16 bits (_arrays.from_library views them)."""
    grad_out, query, key, value, out, lse = (library_array(a) for a in arrays)
    grads = _sdpa.backward(grad_out, query, key, value, out, lse, options)
    if with_sinks and len(grads) == 3:
        grads += (np.zeros(0, grads[0].dtype),)
    return grads


@_public
@python_names()
@with_variants()
def explain(query: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike, *,
            mask: Optional[npt.ArrayLike] = None, causal: Causal = None,
            scale: Optional[Real] = None, backend: Backend = None,
            **variants: Unpack[Variants]) -> str:
    """What ``attention(query, key, value, ...)`` would do, as text: the backend, the kernel path,
    its tiles, the SIMD target and the threads, with the reason for each choice. Takes the
    keywords of ``attention`` except ``return_lse`` and validates like it (same errors; the seed
    does not change the plan). Setting ``SDPA_VERBOSE=1`` prints this for every call.

    >>> import numpy as np, sdpa
    >>> x = np.zeros((4, 8))
    >>> print(sdpa.explain(x, x, x, causal="top_left"))  # doctest: +ELLIPSIS
    sdpa plan: backend=... path=...
    """
    q, k, v, m = _operands(query, key, value, mask)
    if variants.get("seed") is None:
        variants["seed"] = 0  # the plan does not depend on it: draw none
    options = make_options(q, mask=m, causal=causal, scale=scale, backend=backend, **variants)
    return _sdpa.explain(library_array(q), library_array(k), library_array(v), options)


@_public
@python_names()
def set_num_threads(n: SupportsIndex) -> None:
    """Sets the threads the CPU engine uses: an int in ``[0, 1024]``; 0 (the default) means all
    hardware threads, or the ``SDPA_NUM_THREADS`` environment variable when it is set. Results do
    not depend on it.

    >>> import sdpa
    >>> sdpa.set_num_threads(1)
    >>> sdpa.get_num_threads()
    1
    >>> sdpa.set_num_threads(0)  # back to the default
    """
    what = f"[0, {_MAX_THREADS}] (0 = all hardware threads)"
    try:
        if isinstance(n, (bool, np.bool_)):
            raise TypeError
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"sdpa: n is {n!r} but must be an int in {what}") from None
    if not 0 <= count <= _MAX_THREADS:
        raise ValueError(f"sdpa: n is {count} but must be in {what}")
    _sdpa.set_num_threads(count)


@_public
def get_num_threads() -> int:
    """The threads the CPU engine uses (see ``set_num_threads``); at least 1.

    >>> import sdpa
    >>> sdpa.get_num_threads() >= 1
    True
    """
    return _sdpa.get_num_threads()
