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
    packed QKV buffer, broadcast views with stride 0, negative strides -- as long as the last
    dimension is contiguous (a kernel streams rows), every stride is a whole number of elements and
    the data is aligned. Anything else is copied once into C order. Inputs are never written to.
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


def _native(a):
    """`a` in the machine's byte order (the library reads native numbers)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _readable_in_place(a):
    """True when the library can read `a` through its pointer and element strides."""
    if not a.flags.aligned:
        return False
    if any(stride % a.itemsize for stride in a.strides):
        return False
    return a.ndim == 0 or a.shape[-1] <= 1 or a.strides[-1] == a.itemsize


def _in_place_or_copy(a):
    return a if _readable_in_place(a) else np.array(a, order="C", copy=True)


def as_operand(name, x):
    """A float32/float64 array for query, key, value, Q, K, V, X or a weight matrix."""
    a = _native(to_ndarray(name, x))
    if a.dtype in _FLOAT_DTYPES:
        return _in_place_or_copy(a)
    if a.dtype.kind in "biu":
        return np.asarray(a, dtype=np.float64)
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be float32 or float64 "
        "(ints and bools are converted to float64)"
    )


def as_mask(name, x, query_dtype):
    """A bool mask, or a float mask in `query_dtype` (see the rules above)."""
    a = _native(to_ndarray(name, x))
    is_array = isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")
    if a.dtype == np.bool_:
        return _in_place_or_copy(a)
    if is_array and a.dtype in _FLOAT_DTYPES:
        if a.dtype == np.float32 and query_dtype == np.float64:
            return a.astype(np.float64)
        return _in_place_or_copy(a)  # a float64 mask for a float32 query is the library's to refuse
    if a.dtype.kind in "iu" or (a.dtype.kind == "f" and not is_array):
        return np.asarray(a, dtype=query_dtype)
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be bool (True = attend) or a float dtype "
        "(added to the scores)"
    )
