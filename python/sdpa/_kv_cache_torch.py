"""sdpa.torch.attention_with_kvcache: sdpa.attention_with_kvcache on CPU torch tensors, writing
the appended tokens into the torch cache tensors in place. Imported by sdpa.torch only (it imports
PyTorch; the rest of the package never does)."""

from __future__ import annotations  # the annotations name types only type checkers import

from typing import Literal, Optional, Tuple, Union, overload

import numpy as np
import torch

from ._arrays import is_bfloat16
from ._kv_cache import attention_with_kvcache as _attention_with_kvcache
from ._kv_cache import kv_names
from ._typing import Bool, Real, Window

_Lse = Tuple[torch.Tensor, torch.Tensor]


def _tensor(name, x, written):
    """A CPU tensor detached (the numpy layer reads it through DLPack, zero-copy: the cache
    tensors are written through that view). A cache must not take part in autograd: its in-place
    change would be invisible to it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sdpa: {name} is a {type(x).__name__} but must be a torch.Tensor")
    if x.device.type != "cpu":
        raise ValueError(f"sdpa: {name} is on device {x.device} but must be on the CPU "
                         "(sdpa computes on the CPU)")
    if x.requires_grad and (written or torch.is_grad_enabled()):
        raise ValueError(
            f"sdpa: {name} requires grad but attention_with_kvcache has no gradient (it is for "
            "inference: call it under torch.no_grad() or torch.inference_mode())")
    return x.detach()


def _optional(name, x, written=False):
    return None if x is None else _tensor(name, x, written)


def _to_torch(a):
    """A result array as a tensor sharing its memory (bfloat16 through its uint16 bits: torch
    takes no ml_dtypes array)."""
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _lengths(name, x):
    """cache_seqlens or block_table: a tensor detached, or anything numpy reads."""
    return _tensor(name, x, False) if isinstance(x, torch.Tensor) else x


@overload
def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           k: Optional[torch.Tensor] = ..., v: Optional[torch.Tensor] = ..., *,
                           cache_seqlens: object, block_table: object = ...,
                           k_scale: Optional[torch.Tensor] = ...,
                           v_scale: Optional[torch.Tensor] = ..., scale: Optional[Real] = ...,
                           is_causal: Bool = ..., window: Optional[Window] = ...,
                           softcap: Optional[Real] = ..., sinks: object = ...,
                           return_lse: Literal[False] = ...) -> torch.Tensor: ...
@overload
def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           k: Optional[torch.Tensor] = ..., v: Optional[torch.Tensor] = ..., *,
                           cache_seqlens: object, block_table: object = ...,
                           k_scale: Optional[torch.Tensor] = ...,
                           v_scale: Optional[torch.Tensor] = ..., scale: Optional[Real] = ...,
                           is_causal: Bool = ..., window: Optional[Window] = ...,
                           softcap: Optional[Real] = ..., sinks: object = ...,
                           return_lse: Literal[True]) -> _Lse: ...
@overload
def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           k: Optional[torch.Tensor] = ..., v: Optional[torch.Tensor] = ..., *,
                           cache_seqlens: object, block_table: object = ...,
                           k_scale: Optional[torch.Tensor] = ...,
                           v_scale: Optional[torch.Tensor] = ..., scale: Optional[Real] = ...,
                           is_causal: Bool = ..., window: Optional[Window] = ...,
                           softcap: Optional[Real] = ..., sinks: object = ...,
                           return_lse: Bool = ...) -> Union[torch.Tensor, _Lse]: ...


@kv_names()
def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           k: Optional[torch.Tensor] = None, v: Optional[torch.Tensor] = None, *,
                           cache_seqlens: object, block_table: object = None,
                           k_scale: Optional[torch.Tensor] = None,
                           v_scale: Optional[torch.Tensor] = None, scale: Optional[Real] = None,
                           is_causal: Bool = True, window: Optional[Window] = None,
                           softcap: Optional[Real] = None, sinks: object = None,
                           return_lse: Bool = False) -> Union[torch.Tensor, _Lse]:
    """``sdpa.attention_with_kvcache`` on CPU torch tensors: the same arguments, shapes, rules and
    errors; ``k``/``v`` are written into ``k_cache``/``v_cache`` (and, for an int8 cache, their
    scales into ``k_scale``/``v_scale``) in place, so the tensors you pass see the new tokens.
    ``cache_seqlens``, ``block_table`` and ``sinks`` may be tensors or anything numpy reads.
    Returns ``out`` (a tensor of ``q``'s dtype), or ``(out, lse)``.

    Inference only: no gradient. A cache that requires grad is refused, and so is ``q``, ``k`` or
    ``v`` requiring grad while grad mode is on (use ``torch.no_grad()`` or
    ``torch.inference_mode()``).

    >>> import torch, sdpa.torch
    >>> k_cache = torch.zeros(1, 2, 16, 8)  # (batch, kv heads, max_len, head_dim)
    >>> v_cache = torch.zeros(1, 2, 16, 8)
    >>> lens = torch.tensor([5], dtype=torch.int32)
    >>> q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    >>> out = sdpa.torch.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens)
    >>> out.shape, bool(torch.equal(k_cache[0, :, 5], k[0, :, 0]))
    (torch.Size([1, 4, 1, 8]), True)
    """
    result = _attention_with_kvcache(
        _tensor("q", q, False), _tensor("k_cache", k_cache, True),
        _tensor("v_cache", v_cache, True), _optional("k", k), _optional("v", v),
        cache_seqlens=_lengths("cache_seqlens", cache_seqlens),
        block_table=None if block_table is None else _lengths("block_table", block_table),
        k_scale=_optional("k_scale", k_scale, True), v_scale=_optional("v_scale", v_scale, True),
        scale=scale, is_causal=is_causal, window=window, softcap=softcap,
        sinks=None if sinks is None else _lengths("sinks", sinks), return_lse=return_lse)
    if k is not None:
        # What autograd sees of the in-place write: the caches' version counters move on, so a
        # graph that saved one of them for its backward raises instead of using the new values.
        written = [x for x in (k_cache, v_cache, k_scale, v_scale) if x is not None]
        torch.autograd.graph.increment_version(written)
    if isinstance(result, tuple):
        return _to_torch(result[0]), _to_torch(result[1])
    return _to_torch(result)


attention_with_kvcache.__module__ = "sdpa.torch"
