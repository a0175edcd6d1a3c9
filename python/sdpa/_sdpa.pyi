"""Types of sdpa._sdpa, the nanobind extension (python/src/sdpa_ext.cc): the package's private
back end, which only converts types. Arrays are CPU arrays the library reads in place (numpy
arrays, or any object with the buffer protocol or __dlpack__), of float32, float64, float16,
bfloat16 (a torch tensor through DLPack, or BFloat16 of the uint16 bits of a numpy array) or
(masks) bool; results are new numpy arrays of the inputs' float dtype, bfloat16 ones as their
uint16 bits. attention_with_kvcache also takes int8 caches and int32 lengths and block tables,
and writes into k_cache, v_cache, k_scale and v_scale in place (they must be writable).

tests/python/test_typing.py checks that these names and parameters are the extension's."""

import enum
from typing import Any, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_Out = npt.NDArray[Any]  # float32, float64, float16, or uint16 (the bits of bfloat16)

class BFloat16:
    """The bits of a bfloat16 array (uint16), tagged as bfloat16 for the library."""

    @property
    def bits(self) -> _Array: ...
    def __init__(self, bits: _Array) -> None: ...

_In = Union[_Array, BFloat16]

__version__: str

class Causal(enum.Enum):
    """sdpa::Causal."""

    none = 0
    top_left = 1
    bottom_right = 2

class Backend(enum.Enum):
    """sdpa::Backend."""

    auto = 0
    reference = 1
    cpu = 2

class Window:
    """sdpa::Window: None for a side = unbounded."""

    left: Optional[int]
    right: Optional[int]
    def __init__(self, left: Optional[int] = None, right: Optional[int] = None) -> None: ...

class Options:
    """sdpa::Options, field by field (include/sdpa/options.h); mask keeps its array alive."""

    scale: Optional[float]
    causal: Causal
    mask: Optional[_In]
    backend: Backend
    window: Optional[Window]
    alibi_slopes: List[float]
    softcap: Optional[float]
    sinks: List[float]
    cu_seqlens_q: List[int]
    cu_seqlens_k: List[int]
    dropout_p: float
    seed: int
    def __init__(self) -> None: ...

@overload
def forward(query: _In, key: _In, value: _In, options: Options,
            return_lse: Literal[False]) -> _Out: ...
@overload
def forward(query: _In, key: _In, value: _In, options: Options,
            return_lse: Literal[True]) -> Tuple[_Out, _Out]: ...
@overload
def forward(query: _In, key: _In, value: _In, options: Options,
            return_lse: bool) -> Union[_Out, Tuple[_Out, _Out]]: ...
def backward(grad_out: _In, query: _In, key: _In, value: _In, out: _In, lse: _In,
             options: Options) -> Tuple[_Out, ...]: ...
def explain(query: _In, key: _In, value: _In, options: Options) -> str: ...
def merge_partials(outs: Sequence[_Array], lses: Sequence[_Array]) -> Tuple[_Out, _Out]: ...
def self_attention(Q: _Array, K: _Array, V: _Array) -> _Out: ...
def compute_qkv(X: _Array, W_q: _Array, W_k: _Array, W_v: _Array) -> Tuple[_Out, _Out, _Out]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def attention_with_kvcache(query: _In, k_cache: _Array, v_cache: _Array, k: Optional[_In],
                           v: Optional[_In], cache_seqlens: _Array, block_table: Optional[_Array],
                           k_scale: Optional[_Array], v_scale: Optional[_Array], options: Options,
                           return_lse: bool) -> Union[_Out, Tuple[_Out, _Out]]: ...
