"""The types of sdpa's public API, for its annotations and for type checkers (the package ships
py.typed; _sdpa.pyi types the extension).

Arrays go in as anything numpy reads (numpy.typing.ArrayLike) and come out as numpy arrays of
the inputs' float dtype (FloatArray: float32, float64, float16 or ml_dtypes.bfloat16). The keyword types follow the run-time
rules of _options.py: Bool is bool or numpy.bool_, Real an int, float, numpy real scalar or 0-d
array, and causal/backend are the literal names."""

from typing import Any, Literal, Optional, Sequence, TypedDict, Union

import numpy as np
import numpy.typing as npt

# float32 for float32 inputs, float64 for float64, ints and bools, float16 and bfloat16 for theirs.
FloatArray = npt.NDArray[np.floating[Any]]
Bool = Union[bool, np.bool_]
# (int is accepted where float is: PEP 484's numeric tower)
Real = Union[float, np.integer[Any], np.floating[Any], npt.NDArray[Any]]
Causal = Optional[Literal["none", "top_left", "bottom_right"]]
Backend = Optional[Literal["auto", "cpu", "reference"]]
Window = Sequence[Optional[int]]  # (left, right); None = unbounded on that side
Seed = Union[int, np.integer[Any]]  # in [0, 2**64)


class SdpaVariants(TypedDict, total=False):
    """The variant keywords of scaled_dot_product_attention (dropout_p and seed are its own
    parameters)."""

    window: Optional[Window]
    alibi_slopes: Optional[npt.ArrayLike]
    softcap: Optional[Real]
    sinks: Optional[npt.ArrayLike]


class Variants(SdpaVariants, total=False):
    """The variant keywords of attention, attention_backward, explain and sdpa.torch.attention
    (_options.VARIANTS, with their types)."""

    cu_seqlens_q: Optional[npt.ArrayLike]
    cu_seqlens_k: Optional[npt.ArrayLike]
    dropout_p: Real
    seed: Optional[Seed]
