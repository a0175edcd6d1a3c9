"""Turns what the caller passed into arrays the C++ library can read in place.

Rules (docs/python.md states them for users):
  * float32 and float64 arrays keep their dtype; ints and bools become float64; anything else
    (float16, complex, strings, objects) is a TypeError naming the argument and the dtype.
  * Masks: bool stays bool (True = attend); float masks are added to the scores and must have the
    query's dtype, except that a float32 mask is widened for a float64 query (PyTorch accepts it);
    ints and Python lists take the query's dtype.
  * Lists and scalars are read with numpy.asarray; objects with __dlpack__ (PyTorch CPU tensors,
    JAX, CuPy, ...) with numpy.from_dlpack, so both are zero-copy.
  * The library takes any element strides, so views are passed as they are -- strided slices of a
    packed QKV buffer, broadcast views with stride 0, negative strides -- as long as every stride
    is a whole number of elements, the data is aligned and, for query/key/value (whose rows a
    kernel streams), the last dimension is contiguous. Anything else is copied once into C order.
    Inputs are never written to.
  * A copy (for the layout, the dtype or the byte order) is made of the distinct values only: a
    stride-0 (broadcast) dimension is copied at size 1 and broadcast again, so a mask broadcast
    to (batch, heads, L, S) costs the memory of one (L, S) mask, never of the full shape.
"""

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def to_ndarray(name, x):
    """`x` as a numpy array without copying when numpy allows it."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, ValueError, BufferError, RuntimeError) as e:
            dtype = getattr(x, "dtype", "unknown")
            raise TypeError(
                f"sdpa: {name} ({type(x).__name__}, dtype {dtype}) cannot be read through "
                f"DLPack as a CPU array: {e}"
            ) from e
    try:
        return np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"sdpa: {name} is not a rectangular array: {e}") from e


def _native(dtype):
    """`dtype` in the machine's byte order (the library reads native numbers)."""
    return dtype.newbyteorder("=")


def _readable_in_place(a, rows_contiguous):
    """True when the library can read `a` through its pointer and element strides (and, with
    `rows_contiguous`, its last dimension is contiguous)."""
    if not a.flags.aligned:
        return False
    if any(stride % a.itemsize for stride in a.strides):
        return False
    if not rows_contiguous:
        return True
    return a.ndim == 0 or a.shape[-1] <= 1 or a.strides[-1] == a.itemsize


def _distinct(a, rows_contiguous):
    """`a` with its broadcast dimensions (stride 0, size > 1) cut to size 1: the values a copy
    needs. With `rows_contiguous` the last dimension is kept whole (a copy gets contiguous rows)."""
    dims = a.ndim - 1 if rows_contiguous else a.ndim
    return a[tuple(slice(0, 1) if d < dims and a.strides[d] == 0 and a.shape[d] > 1
                   else slice(None) for d in range(a.ndim))]


def _copy(a, dtype, rows_contiguous):
    """A C-order copy of `a` in `dtype` (native byte order) that the library reads, of `a`'s
    distinct values only, broadcast back to `a`'s shape (read-only, stride 0 where `a` is)."""
    core = np.array(_distinct(a, rows_contiguous), dtype=_native(np.dtype(dtype)), order="C")
    return core if core.shape == a.shape else np.broadcast_to(core, a.shape)


def _readable(a, rows_contiguous, dtype=None):
    """`a` as it is when the library can read it in `dtype` (default: its own), else _copy."""
    dtype = _native(a.dtype if dtype is None else np.dtype(dtype))
    if a.dtype == dtype and _readable_in_place(a, rows_contiguous):
        return a
    return _copy(a, dtype, rows_contiguous)


def as_operand(name, x):
    """A float32/float64 array for query, key, value, Q, K, V, X or a weight matrix."""
    a = to_ndarray(name, x)
    if _native(a.dtype) in _FLOAT_DTYPES:
        return _readable(a, rows_contiguous=True)
    if a.dtype.kind in "biu":
        return _readable(a, rows_contiguous=True, dtype=np.float64)
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be float32 or float64 "
        "(ints and bools are converted to float64)"
    )


def as_mask(name, x, query_dtype):
    """A bool mask, or a float mask in `query_dtype` (see the rules above). The library reads a
    mask through any element strides, so only a dtype change or a misaligned array is copied."""
    a = to_ndarray(name, x)
    is_array = isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")
    if a.dtype == np.bool_:
        return _readable(a, rows_contiguous=False)
    if is_array and _native(a.dtype) in _FLOAT_DTYPES:
        if _native(a.dtype) == np.float32 and query_dtype == np.float64:
            return _readable(a, rows_contiguous=False, dtype=np.float64)
        # a float64 mask for a float32 query is the library's to refuse
        return _readable(a, rows_contiguous=False)
    if a.dtype.kind in "iu" or (a.dtype.kind == "f" and not is_array):
        return _readable(a, rows_contiguous=False, dtype=query_dtype)
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be bool (True = attend) or a float dtype "
        "(added to the scores)"
    )
