"""sdpa.attention_with_kvcache: one decode (or speculative, or chunked-prefill) step over a KV
cache, sdpa::AttentionWithKvCache (include/sdpa/kv_cache.h, docs/semantics.md §15).

What Python decides here, before the library sees anything (and so before anything is written):
  * The caches k_cache, v_cache and an int8 cache's k_scale, v_scale are written in place, so
    they must be arrays the library can write as they are: numpy arrays or DLPack tensors (never
    lists), writable, aligned, in native byte order, with strides of whole elements and no
    broadcast (stride-0) dimension. One that is not is an error, never a copy: a copy would take
    the appended tokens with it.
  * q, k and v are read only: float arrays, copied once when their layout needs it, like every
    operand (_arrays.as_operand; bfloat16 crosses as its bits). Their dtypes are the library's
    to check (float32, float16 or bfloat16).
  * cache_seqlens and block_table: integer arrays or lists, converted to the int32 the library
    reads (a value beyond int32 is an error, never wrapped).
  * is_causal and return_lse are bools; scale, window, softcap and sinks are checked by
    make_options like everywhere.
Everything else -- ranks, shapes, dtypes of the caches, capacities, block ids, scales, overlaps --
is the library's to check, all before it writes; its messages name sdpa::KvCache's fields
(`cache.key`, `append.value`, ...), which kv_names() renames to this function's arguments.
"""

from __future__ import annotations  # the annotations name types only type checkers import

import contextlib
import re
from typing import Iterator, Literal, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import _sdpa
from ._arrays import as_operand, from_library, is_bfloat16, is_float, library_array, to_ndarray
from ._errors import rename
from ._options import boolean, make_options
from ._typing import Bool, FloatArray, Real, Window

_INT32_MAX = 2**31 - 1

# sdpa::KvCache's fields and the library's operand names -> this function's arguments.
_RENAMES = {
    "query": "q",
    "cache.key": "k_cache",
    "cache.value": "v_cache",
    "cache.block_table": "block_table",
    "cache.key_scale": "k_scale",
    "cache.value_scale": "v_scale",
    "append.key": "k",
    "append.value": "v",
}
_KV_NAME = re.compile(r"(?<![\w.])(cache\.(?:key_scale|value_scale|key|value|block_table)"
                      r"|append\.(?:key|value)|query(?=[.\[]| has | is ))")


@contextlib.contextmanager
def kv_names() -> Iterator[None]:
    """Context manager and decorator: sdpa errors raised inside name the arguments of
    attention_with_kvcache (k_cache, not cache.key), and window[0], sinks[h], ... for the
    options, as _errors.python_names does."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if e.args and isinstance(e.args[0], str) and e.args[0].startswith("sdpa: "):
            message = _KV_NAME.sub(lambda m: _RENAMES[m.group(1)], e.args[0])
            e.args = (rename(message),) + e.args[1:]
        raise


def writable_in_place(name, x, scales=False):
    """`x` as a numpy array over the same memory, which the library writes into: a cache or
    (`scales`) an int8 cache's scales. Anything that cannot be written as it is raises; nothing
    is copied. The float dtypes are the library's to tell apart (its message says which)."""
    if not (isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")):
        raise TypeError(
            f"sdpa: {name} is a {type(x).__name__} but must be an array (numpy, or a tensor "
            "with __dlpack__): the new tokens are written into it in place, so it is never "
            "copied")
    a = to_ndarray(name, x)
    if not (is_float(a.dtype) or a.dtype.kind == "f" or (a.dtype == np.int8 and not scales)):
        expected = "float32" if scales else "float32, bfloat16, float16 or int8"
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be {expected}")
    if is_bfloat16(a.dtype):  # it would cross the extension as read-only bits (_sdpa.BFloat16)
        raise TypeError(f"sdpa: {name}.dtype is bfloat16, which the Python layer cannot write "
                        "in place yet; use a float32, float16 or int8 cache")
    if not a.flags.writeable:
        raise ValueError(f"sdpa: {name} is read-only but must be writable: the new tokens are "
                         "written into it in place (a copy would lose them)")
    if not a.dtype.isnative:
        raise ValueError(f"sdpa: {name} has dtype {a.dtype.str} (non-native byte order) but "
                         "must be in the machine's byte order to be written in place")
    if not a.flags.aligned or any(s % a.itemsize for s in a.strides):
        raise ValueError(f"sdpa: {name} has strides {a.strides} (bytes) and itemsize "
                         f"{a.itemsize} but must be aligned with strides of whole elements to "
                         "be written in place")
    for d, (size, stride) in enumerate(zip(a.shape, a.strides)):
        if stride == 0 and size > 1:
            raise ValueError(f"sdpa: {name} has stride 0 in dimension {d} (a broadcast view) "
                             "but a cache's rows must be distinct memory")
    return a


def _float_operand(name, x):
    """q, k or v: read only, so copied when its layout needs it; ints are refused here rather
    than turned into float64 by as_operand (no cache step computes in float64)."""
    a = to_ndarray(name, x)
    if not is_float(a.dtype):
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be float32, bfloat16 or "
                        "float16")
    return as_operand(name, a)


def int32_array(name, x):
    """cache_seqlens or block_table: any integers, as the C-contiguous int32 array the library
    reads (copied when they are not that already; the library only reads them)."""
    a = to_ndarray(name, x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be an integer dtype (int32)")
    if a.dtype != np.int32 and a.size:
        bad = (a < -_INT32_MAX - 1) | (a > _INT32_MAX)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            index = f"[{', '.join(map(str, where))}]" if where else ""
            raise ValueError(f"sdpa: {name}{index} is {a[tuple(where)]} but must fit in int32 "
                             f"(at most {_INT32_MAX})")
    return np.ascontiguousarray(a, dtype=np.dtype(np.int32).newbyteorder("="))


@overload
def attention_with_kvcache(q: npt.ArrayLike, k_cache: npt.NDArray[np.generic],
                           v_cache: npt.NDArray[np.generic], k: Optional[npt.ArrayLike] = ...,
                           v: Optional[npt.ArrayLike] = ..., *, cache_seqlens: npt.ArrayLike,
                           block_table: Optional[npt.ArrayLike] = ...,
                           k_scale: Optional[npt.NDArray[np.float32]] = ...,
                           v_scale: Optional[npt.NDArray[np.float32]] = ...,
                           scale: Optional[Real] = ..., is_causal: Bool = ...,
                           window: Optional[Window] = ..., softcap: Optional[Real] = ...,
                           sinks: Optional[npt.ArrayLike] = ...,
                           return_lse: Literal[False] = ...) -> FloatArray: ...
@overload
def attention_with_kvcache(q: npt.ArrayLike, k_cache: npt.NDArray[np.generic],
                           v_cache: npt.NDArray[np.generic], k: Optional[npt.ArrayLike] = ...,
                           v: Optional[npt.ArrayLike] = ..., *, cache_seqlens: npt.ArrayLike,
                           block_table: Optional[npt.ArrayLike] = ...,
                           k_scale: Optional[npt.NDArray[np.float32]] = ...,
                           v_scale: Optional[npt.NDArray[np.float32]] = ...,
                           scale: Optional[Real] = ..., is_causal: Bool = ...,
                           window: Optional[Window] = ..., softcap: Optional[Real] = ...,
                           sinks: Optional[npt.ArrayLike] = ...,
                           return_lse: Literal[True]) -> Tuple[FloatArray, FloatArray]: ...
@overload
def attention_with_kvcache(q: npt.ArrayLike, k_cache: npt.NDArray[np.generic],
                           v_cache: npt.NDArray[np.generic], k: Optional[npt.ArrayLike] = ...,
                           v: Optional[npt.ArrayLike] = ..., *, cache_seqlens: npt.ArrayLike,
                           block_table: Optional[npt.ArrayLike] = ...,
                           k_scale: Optional[npt.NDArray[np.float32]] = ...,
                           v_scale: Optional[npt.NDArray[np.float32]] = ...,
                           scale: Optional[Real] = ..., is_causal: Bool = ...,
                           window: Optional[Window] = ..., softcap: Optional[Real] = ...,
                           sinks: Optional[npt.ArrayLike] = ..., return_lse: Bool = ...
                           ) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]: ...


@kv_names()
def attention_with_kvcache(q: npt.ArrayLike, k_cache: npt.NDArray[np.generic],
                           v_cache: npt.NDArray[np.generic], k: Optional[npt.ArrayLike] = None,
                           v: Optional[npt.ArrayLike] = None, *, cache_seqlens: npt.ArrayLike,
                           block_table: Optional[npt.ArrayLike] = None,
                           k_scale: Optional[npt.NDArray[np.float32]] = None,
                           v_scale: Optional[npt.NDArray[np.float32]] = None,
                           scale: Optional[Real] = None, is_causal: Bool = True,
                           window: Optional[Window] = None, softcap: Optional[Real] = None,
                           sinks: Optional[npt.ArrayLike] = None, return_lse: Bool = False
                           ) -> Union[FloatArray, Tuple[FloatArray, FloatArray]]:
    """Attention of new tokens over a key/value cache, appending their keys and values to it
    first (FlashAttention's ``flash_attn_with_kvcache``); returns ``out`` or ``(out, lse)``.

    - ``q`` ``(B, Hq, Lq, D)``: ``Lq >= 1`` new tokens per sequence (1 = decode, a few =
      speculative verification, more = chunked prefill). GQA/MQA: ``Hq % Hkv == 0``.
    - ``k_cache`` ``(B, Hkv, max_len, D)`` and ``v_cache`` ``(B, Hkv, max_len, Dv)``, or paged
      ``(num_blocks, Hkv, block_size, D)`` with ``block_table`` ``(B, max_blocks)``: token ``j``
      of sequence ``b`` is row ``j % block_size`` of block ``block_table[b, j // block_size]``.
      float32, float16 or int8 with ``k_scale``,
      ``v_scale`` (float32, the cache's shape without ``D``): a value is ``int8 * scale``.
    - ``cache_seqlens`` ``(B,)``: tokens already in each sequence's cache (integers, read as
      int32). It is not changed: advance it yourself after appending.
    - ``k`` ``(B, Hkv, Lq, D)``, ``v`` ``(B, Hkv, Lq, Dv)``: when given (both or neither), written
      into the caches at positions ``cache_seqlens[b] .. cache_seqlens[b] + Lq - 1`` **in place**,
      before the queries attend to ``cache_seqlens[b] + Lq`` keys (else to ``cache_seqlens[b]``).
      Into an int8 cache each (token, head) row is quantized: ``scale = max|x| / 127``,
      ``int8 = round_half_even(x / scale)``.
    - ``is_causal`` (default True): query ``i`` sees the cache and the new tokens up to itself
      (bottom-right alignment); False: every key of its sequence.
    - ``scale`` (default ``1 / sqrt(D)``), ``window=(left, right)``, ``softcap``, ``sinks``: as
      for ``sdpa.attention``, with positions counted in the cache.
    - ``return_lse``: also return the log-sum-exp of each row's scores, ``(B, Hq, Lq)`` float32.

    ``out`` is ``(B, Hq, Lq, Dv)`` of ``q``'s dtype. The caches (and scales) must be writable
    arrays that the library writes as they are (numpy arrays or DLPack tensors, aligned, native
    byte order, no broadcast dimension; an int8 cache with contiguous rows); anything else is an
    error, never a silent copy. Every argument is checked before anything is written: on a
    ValueError or TypeError (which names the argument, ``k_cache``, ``cache_seqlens``,
    ``block_table``, ..., the expected and the actual value) the caches are unchanged. Ctrl-C
    interrupts the call (after the append has been written).

    >>> import numpy as np, sdpa
    >>> rng = np.random.default_rng(0)
    >>> k_cache = np.zeros((2, 1, 8, 4), dtype=np.float32)  # 2 sequences, 1 kv head, 8 slots
    >>> v_cache = np.zeros((2, 1, 8, 4), dtype=np.float32)
    >>> lens = np.array([3, 0], dtype=np.int32)              # sequence 1 is empty
    >>> q = rng.standard_normal((2, 2, 1, 4), dtype=np.float32)  # one new token, 2 query heads
    >>> k = rng.standard_normal((2, 1, 1, 4), dtype=np.float32)
    >>> v = rng.standard_normal((2, 1, 1, 4), dtype=np.float32)
    >>> out = sdpa.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens)
    >>> out.shape
    (2, 2, 1, 4)
    >>> bool((k_cache[0, 0, 3] == k[0, 0, 0]).all() and (k_cache[1, 0, 0] == k[1, 0, 0]).all())
    True

    Sequence 1 had nothing cached, so its query sees only its own new token:

    >>> bool(np.allclose(out[1, :, 0], v[1, 0, 0]))
    True

    A position past the cache is refused before anything is written:

    >>> sdpa.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=[8, 0])
    Traceback (most recent call last):
    ...
    ValueError: sdpa: cache_seqlens[0] is 8 and 1 token(s) are appended, but sequence 0 has room for 8 (k_cache.shape[2], max_len)
    """
    if (k is None) != (v is None):
        given, missing = ("k", "v") if v is None else ("v", "k")
        raise ValueError(f"sdpa: {given} is given but {missing} is not; give both (new tokens "
                         "to append) or neither")
    key_cache = writable_in_place("k_cache", k_cache)
    value_cache = writable_in_place("v_cache", v_cache)
    key_scale = None if k_scale is None else writable_in_place("k_scale", k_scale, scales=True)
    value_scale = None if v_scale is None else writable_in_place("v_scale", v_scale, scales=True)
    query = _float_operand("q", q)
    key = None if k is None else _float_operand("k", k)
    value = None if v is None else _float_operand("v", v)
    lens = int32_array("cache_seqlens", cache_seqlens)
    table = None if block_table is None else int32_array("block_table", block_table)
    causal = "bottom_right" if boolean("is_causal", is_causal) else None
    options = make_options(query, causal=causal, scale=scale, window=window, softcap=softcap,
                           sinks=sinks)
    result = _sdpa.attention_with_kvcache(library_array(query), key_cache, value_cache,
                                          library_array(key), library_array(value), lens, table,
                                          key_scale, value_scale, options,
                                          boolean("return_lse", return_lse))
    if isinstance(result, tuple):
        return from_library(result[0]), result[1]
    return from_library(result)


attention_with_kvcache.__module__ = "sdpa"
