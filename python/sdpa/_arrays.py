"""Turns what the caller passed into arrays the C++ library can read in place.

Rules (docs/python.md states them for users):
  * float32, float64, float16 and bfloat16 (ml_dtypes.bfloat16) arrays keep their dtype; ints
    and bools become float64; anything else (complex, strings, objects) is a TypeError naming the
    argument and the dtype. Which dtypes combine in one call is the library's rule
    (docs/semantics.md, 13.9), checked there.
  * Masks: bool stays bool (True = attend); float masks of any of those float dtypes are added to
    the scores as they are, except that a float16/bfloat16/float32 mask is widened for a float64
    query (the library computes float64 calls in float64 only); ints and Python lists take the
    query's dtype, float32 for a 16-bit query.
  * bfloat16 crosses into the extension as its bits: library_array() wraps the uint16 view of a
    bfloat16 array in _sdpa.BFloat16 (numpy exports no bfloat16 through the buffer protocol or
    DLPack), and from_library() views the uint16 results the extension returns for bfloat16 as
    ml_dtypes.bfloat16. ml_dtypes is imported only when a bfloat16 array is met.
  * Lists and scalars are read with numpy.asarray; objects with __dlpack__ (PyTorch CPU tensors,
    JAX, CuPy, ...) with numpy.from_dlpack, so both are zero-copy; a torch bfloat16 tensor, which
    numpy cannot take through DLPack, as an ml_dtypes.bfloat16 view of its uint16 bits.
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

from . import _sdpa

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_HALF_DTYPES = (np.dtype(np.float16),)  # and bfloat16, which is not numpy's (is_bfloat16)


def is_bfloat16(dtype):
    """True for ml_dtypes.bfloat16 (recognised by name: ml_dtypes need not be imported)."""
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def bfloat16():
    """ml_dtypes.bfloat16, imported when first needed: an optional dependency."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError(
            f"sdpa: bfloat16 numpy arrays need ml_dtypes, which could not be imported ({e}); "
            "install it with `pip install ml_dtypes` (or `pip install sdpa[bfloat16]`)") from e
    return np.dtype(ml_dtypes.bfloat16)


def is_float(dtype):
    """float32, float64, float16 or bfloat16, in any byte order."""
    return _native(dtype) in _FLOAT_DTYPES or is_bfloat16(dtype)


def is_16_bit(dtype):
    return _native(dtype) in _HALF_DTYPES or is_bfloat16(dtype)


def library_array(a):
    """`a` as the extension takes it: bfloat16 as _sdpa.BFloat16 of its uint16 bits, any other
    array (and None) as it is."""
    if isinstance(a, np.ndarray) and is_bfloat16(a.dtype):
        return _sdpa.BFloat16(a.view(np.uint16))
    return a


def from_library(a):
    """A result of the extension in its dtype: uint16 results are the bits of bfloat16 ones."""
    return a.view(bfloat16()) if a.dtype == np.uint16 else a


def to_ndarray(name, x):
    """`x` as a numpy array without copying when numpy allows it."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            # (one that requires grad goes to from_dlpack, to be refused as any other)
            if str(getattr(x, "dtype", "")) == "torch.bfloat16" and not x.requires_grad:
                return _torch_bfloat16(x)
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


def _torch_bfloat16(tensor):
    """A torch bfloat16 tensor as an ml_dtypes.bfloat16 array sharing its memory: numpy cannot
    take kDLBfloat through DLPack, so its bits go as uint16 and are viewed back."""
    import torch  # the tensor's own module: imported already

    return np.from_dlpack(tensor.view(torch.uint16)).view(bfloat16())


def _native(dtype):
    """`dtype` in the machine's byte order (the library reads native numbers)."""
    return dtype if is_bfloat16(dtype) else dtype.newbyteorder("=")


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
    """A float32/float64/float16/bfloat16 array for query, key, value, out, grad_out, lse, Q, K,
    V, X or a weight matrix."""
    a = to_ndarray(name, x)
    if is_float(a.dtype):
        return _readable(a, rows_contiguous=True)
    if a.dtype.kind in "biu":
        return _readable(a, rows_contiguous=True, dtype=np.float64)
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be float32, float64, float16 or bfloat16 "
        "(ints and bools are converted to float64)"
    )


def as_bfloat16_bits(name, bits, rows_contiguous=True):
    """`bits`, a uint16 array of bfloat16 bits (a torch bfloat16 tensor viewed as uint16), laid
    out for the library and tagged as bfloat16: sdpa.torch's way in, which needs no ml_dtypes."""
    return _sdpa.BFloat16(_readable(to_ndarray(name, bits), rows_contiguous))


def as_mask(name, x, query_dtype):
    """A bool mask, or a float mask in `query_dtype` (see the rules above). The library reads a
    mask through any element strides, so only a dtype change or a misaligned array is copied."""
    a = to_ndarray(name, x)
    is_array = isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")
    if a.dtype == np.bool_:
        return _readable(a, rows_contiguous=False)
    if is_array and is_float(a.dtype):
        if query_dtype == np.float64 and _native(a.dtype) != np.float64:
            return _readable(a, rows_contiguous=False, dtype=np.float64)  # exact
        return _readable(a, rows_contiguous=False)
    if a.dtype.kind in "iu" or (a.dtype.kind == "f" and not is_array):
        return _readable(a, rows_contiguous=False, dtype=_mask_dtype(query_dtype))
    raise TypeError(
        f"sdpa: {name}.dtype is {a.dtype} but must be bool (True = attend) or a float dtype "
        "(added to the scores)"
    )


def _mask_dtype(query_dtype):
    """The dtype of an int or list mask: the query's, float32 for a 16-bit query (whose own
    precision would round the mask's values)."""
    return np.dtype(np.float32) if is_16_bit(query_dtype) else query_dtype
