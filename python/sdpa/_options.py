"""The options of one call: the keywords of the attention functions, checked for type and
converted into the extension's Options (sdpa::Options field by field, include/sdpa/options.h).

make_options() is the one place that does it, for every entry point (sdpa.attention,
attention_backward, explain, scaled_dot_product_attention and sdpa.torch.attention). The variant
keywords (VARIANTS) reach it as **variants; with_variants() gives each function's signature
those keywords explicitly. A new option of sdpa::Options is therefore: a def_rw in
python/src/sdpa_ext.cc (and its line in _sdpa.pyi), an entry in VARIANTS with its line in
make_options, and its type in the Variants (or SdpaVariants) TypedDict of _typing.py.

Only what Python must decide is checked here, with messages naming the Python keyword:
  * types: booleans (is_causal, enable_gqa, return_lse) are bool or numpy.bool_ (boolean());
    numbers (scale, softcap, dropout_p) are real (real_number(): int, float, numpy real scalars,
    0-d real arrays; never str, bytes, bool or complex); window a pair of ints or None,
    alibi_slopes and sinks real numbers, cu_seqlens integers (a float array is a TypeError,
    never truncated), seed an int, causal and backend names;
  * shapes numpy would otherwise flatten or guess: per-head values and offsets must be 1-D, and an
    empty alibi_slopes/sinks is refused instead of meaning "none" (as it does in C++);
  * ranges that a C++ number cannot hold: seed in [0, 2**64), cu_seqlens in int64, scale,
    softcap and dropout_p in float64; a window side above 2**63 - 1 is unbounded anyway and is
    clamped;
  * the seed rule: seed=None with dropout_p > 0 draws a fresh seed from secrets.randbits(64) in
    a forward call, and is an error in a backward call (which must regenerate the forward's mask).
Values (window sides >= 0, slopes finite, sinks not +inf/NaN, offsets consistent with the
lengths, dropout_p in [0, 1], a finite scale) are the library's to check; its messages name the
fields `options.window.left`, `options.alibi_slopes[h]`, ... of sdpa::Options, which _errors.py
renames to the Python arguments (`window[0]`, `alibi_slopes[h]`, ...).
"""

import collections.abc
import functools
import inspect
import numbers
import operator
import secrets

from typing import Any, Callable, Tuple, TypeVar, cast

import numpy as np

from . import _sdpa
from ._arrays import library_array, to_ndarray

_F = TypeVar("_F", bound=Callable[..., Any])

_INT64_MAX = 2**63 - 1
_SEED_LIMIT = 2**64

# The variant keywords of sdpa.attention, attention_backward, explain and sdpa.torch.attention
# (scaled_dot_product_attention takes all but the cu_seqlens), with their defaults.
VARIANTS = {
    "window": None,
    "alibi_slopes": None,
    "softcap": None,
    "sinks": None,
    "cu_seqlens_q": None,
    "cu_seqlens_k": None,
    "dropout_p": 0.0,
    "seed": None,
}


def with_variants(omit: Tuple[str, ...] = ()) -> Callable[[_F], _F]:
    """Decorator for `function(..., **variants)`: the keywords of VARIANTS (except `omit` and
    those `function` names itself) become keyword-only parameters of its signature (help(),
    inspect.signature), and any other keyword is refused as Python would refuse it."""

    def decorate(function: _F) -> _F:
        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own}
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                 for name, default in VARIANTS.items() if name not in taken and name not in omit]
        accepted = frozenset(p.name for p in extra)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            for name in kwargs:
                if name not in accepted and name not in taken:
                    raise TypeError(
                        f"{function.__name__}() got an unexpected keyword argument '{name}'")
            return function(*args, **kwargs)

        call.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return cast(_F, call)

    return decorate


def _causal(causal):
    if causal is None:
        return _sdpa.Causal.none
    if not isinstance(causal, str):
        raise TypeError(
            f"sdpa: causal is {causal!r} but must be None, 'top_left' or 'bottom_right' "
            "(PyTorch's is_causal=True is 'top_left')"
        )
    if causal not in ("none", "top_left", "bottom_right"):
        raise ValueError(
            f"sdpa: causal is {causal!r} but must be None, 'top_left' or 'bottom_right'")
    return getattr(_sdpa.Causal, causal)


def _backend(backend):
    if backend is None:
        return _sdpa.Backend.auto
    if not isinstance(backend, str):
        raise TypeError(
            f"sdpa: backend is {backend!r} but must be None, 'auto', 'cpu' or 'reference'")
    if backend not in ("auto", "cpu", "reference"):
        raise ValueError(
            f"sdpa: backend is {backend!r} but must be None, 'auto', 'cpu' or 'reference'")
    return getattr(_sdpa.Backend, backend)


def _window(window):
    if window is None:
        return None
    message = (f"sdpa: window is {window!r} but must be None or a pair (left, right) of ints or "
               "None (None = unbounded on that side)")
    if isinstance(window, (str, bytes, collections.abc.Mapping, collections.abc.Set)):
        raise TypeError(message)
    try:
        sides = tuple(window)
    except TypeError:
        raise TypeError(message) from None
    if len(sides) != 2:
        raise ValueError(f"sdpa: window has {len(sides)} values but must be a pair "
                         "(left, right)")
    result = []
    for index, side in enumerate(sides):
        if side is None:
            result.append(None)
            continue
        try:
            if isinstance(side, (bool, np.bool_)):
                raise TypeError
            value = operator.index(side)
        except TypeError:
            raise TypeError(f"sdpa: window[{index}] is {side!r} but must be an int >= 0 or None "
                            "(unbounded)") from None
        if value < -_INT64_MAX:
            raise ValueError(f"sdpa: window[{index}] is {value} but must be >= 0")
        result.append(min(value, _INT64_MAX))  # beyond every sequence: unbounded
    return _sdpa.Window(*result)


def _real_vector(name, values, heads):
    """alibi_slopes or sinks: one real number per query head, as a list of Python floats."""
    if values is None:
        return []
    a = to_ndarray(name, values)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be a real number dtype "
                        "(converted to float64)")
    if a.ndim != 1:
        raise ValueError(f"sdpa: {name} has shape {a.shape} but must be 1-D, one value per "
                         f"query head ({heads})")
    if a.size == 0 and heads != 0:
        raise ValueError(f"sdpa: {name} has 0 values but must have one per query head ({heads})")
    return a.astype(np.float64).tolist()


def _offsets(name, values):
    """cu_seqlens_q or cu_seqlens_k: integers (sequences + 1), as a list of Python ints."""
    if values is None:
        return []
    a = to_ndarray(name, values)
    if a.ndim != 1:
        raise ValueError(f"sdpa: {name} has shape {a.shape} but must be 1-D (sequences + 1)")
    if a.size == 0:
        raise ValueError(f"sdpa: {name} has 0 values but must have at least 2 (sequences + 1)")
    if a.dtype.kind in "iu":
        offsets = a.tolist()
    elif isinstance(values, (list, tuple)) and all(
            isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))
            for x in values):
        offsets = [int(x) for x in values]  # ints beyond int64: numpy made float64 or objects
    else:
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be an integer dtype "
                        "(cumulative sequence offsets)")
    for s, offset in enumerate(offsets):
        if not -_INT64_MAX - 1 <= offset <= _INT64_MAX:
            raise ValueError(f"sdpa: {name}[{s}] is {offset} but must be in [0, 2**63)")
    return offsets


def boolean(name, value):
    """is_causal, enable_gqa or return_lse as a Python bool: a bool or numpy.bool_, nothing that
    is merely truthy (is_causal="False" would be)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"sdpa: {name} is {value!r} but must be a bool (True or False)")
    return bool(value)


def real_number(name, value, allow_none):
    """scale, softcap or dropout_p as a Python float: an int, float, numpy real scalar or 0-d
    real array (a 0-d tensor through DLPack too); never str, bytes, bool or complex."""
    if value is None and allow_none:
        return None
    number = value
    if not isinstance(value, numbers.Number) and (isinstance(value, np.ndarray)
                                                  or hasattr(value, "__dlpack__")):
        a = to_ndarray(name, value)
        if a.ndim == 0 and a.dtype.kind in "iuf":
            number = a[()]  # a numpy scalar
    if not isinstance(number, numbers.Real) or isinstance(number, (bool, np.bool_)):
        or_none = " or None" if allow_none else ""
        raise TypeError(f"sdpa: {name} is {value!r} but must be a real number{or_none} (int, "
                        "float, a numpy real scalar or a 0-d real array)")
    try:
        return float(number)
    except OverflowError:  # an int or fraction beyond float64's 1.8e308
        digits = len(str(abs(int(number))))
        raise ValueError(f"sdpa: {name} is an int of {digits} digits but must be finite (a "
                         "float64 ends near 1.8e308)") from None


def seed_for(seed, dropout_p, backward=False):
    """The uint64 seed of a call: the caller's, or with dropout and seed=None a fresh one from
    secrets.randbits(64) (forward) or an error (backward)."""
    if seed is None:
        if dropout_p > 0:
            if backward:
                raise ValueError(
                    f"sdpa: seed is None but dropout_p is {dropout_p}; the backward must be "
                    "given the forward's seed to regenerate its dropout mask")
            return secrets.randbits(64)
        return 0
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"sdpa: seed is {seed!r} but must be an int in [0, 2**64) or None")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"sdpa: seed is {seed!r} but must be an int in [0, 2**64) or None") \
            from None
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"sdpa: seed is {seed} but must be in [0, 2**64)")
    return seed


def heads_of(query):
    """The query heads of an engine operand: dim -3, or 1 for a rank-2 (seq, dim) array."""
    return query.shape[-3] if query.ndim >= 3 else 1


def make_options(query, *, mask=None, causal=None, scale=None, backend=None, backward=False,
                 **variants):
    """The _sdpa.Options of a call whose engine query is `query` (its heads size the per-head
    variants); `mask` an array the library can read (see _arrays.as_mask); `variants` keywords
    of VARIANTS (the others take their defaults). `backward`: a backward call (seed rule)."""
    v = dict(VARIANTS, **variants)
    heads = heads_of(query)
    options = _sdpa.Options()
    options.scale = real_number("scale", scale, allow_none=True)
    options.causal = _causal(causal)
    options.mask = library_array(mask)
    options.backend = _backend(backend)
    options.window = _window(v["window"])
    options.alibi_slopes = _real_vector("alibi_slopes", v["alibi_slopes"], heads)
    options.softcap = real_number("softcap", v["softcap"], allow_none=True)
    options.sinks = _real_vector("sinks", v["sinks"], heads)
    options.cu_seqlens_q = _offsets("cu_seqlens_q", v["cu_seqlens_q"])
    options.cu_seqlens_k = _offsets("cu_seqlens_k", v["cu_seqlens_k"])
    options.dropout_p = real_number("dropout_p", v["dropout_p"], allow_none=False)
    options.seed = seed_for(v["seed"], options.dropout_p, backward)
    return options
