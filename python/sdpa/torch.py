"""sdpa.torch: sdpa's attention as a ``torch.autograd.Function``, so PyTorch models train with it.

    attention(query, key, value, *, mask=None, causal=None, scale=None, backend=None,
              window=None, alibi_slopes=None, softcap=None, sinks=None, cu_seqlens_q=None,
              cu_seqlens_k=None, dropout_p=0.0, seed=None)

Also ``attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, ...)``:
``sdpa.attention_with_kvcache`` on tensors, appending into the cache tensors in place (no
gradient; python/sdpa/_kv_cache_torch.py).

The forward computes ``sdpa.attention(..., return_lse=True)``; it saves ``out`` and ``lse`` (not
the ``(Lq, Lkv)`` attention weights) and the call's options, dropout seed included. The backward
is ``sdpa.attention_backward`` with those options: it recomputes the weights tile by tile from
``lse`` (FlashAttention-2) and regenerates the dropout mask from the seed. Tensors cross into the
library through DLPack and the results come back through ``torch.from_numpy``, so neither
direction copies (except an argument whose last dim is not contiguous, which the numpy layer
copies once).

This module imports PyTorch; the rest of the package never does. Importing it without PyTorch
installed raises ImportError.
"""

from __future__ import annotations  # the annotations name types only type checkers import

try:
    import torch
except ImportError as e:
    raise ImportError(
        "sdpa.torch needs PyTorch, which could not be imported "
        f"({e}); install it with `pip install torch`. The rest of sdpa works without it."
    ) from e

from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import numpy.typing as npt
from torch.autograd.function import once_differentiable

from . import _sdpa
from ._arrays import as_bfloat16_bits, as_mask, as_operand
from ._attention import gradients
from ._errors import python_names
from ._kv_cache_torch import attention_with_kvcache
from ._options import make_options, with_variants
from ._typing import Backend, Causal, Real, Variants

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["attention", "attention_with_kvcache"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = "torch.float32, torch.float64, torch.bfloat16 or torch.float16"


def _on_cpu(name, tensor):
    """`tensor` detached, which the numpy layer reads through DLPack without a copy."""
    if tensor.device.type != "cpu":
        raise ValueError(f"sdpa: {name} is on device {tensor.device} but must be on the CPU "
                         "(sdpa computes on the CPU)")
    return tensor.detach()


def _operand(name, tensor):
    """query, key or value: a float CPU tensor, detached. (The numpy layer would turn ints into
    float64; a differentiable function takes floats only, like PyTorch's.)"""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"sdpa: {name} is a {type(tensor).__name__} but must be a torch.Tensor")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"sdpa: {name}.dtype is {tensor.dtype} but must be {_DTYPE_NAMES}")
    return _on_cpu(name, tensor)


def _array(name, tensor, rows_contiguous=True):
    """A detached CPU float tensor as the extension takes it, without a copy: a numpy array
    through DLPack, or for bfloat16 (which numpy cannot hold without ml_dtypes) the bits,
    viewed as uint16, tagged as _sdpa.BFloat16."""
    if tensor.dtype == torch.bfloat16:
        return as_bfloat16_bits(name, tensor.view(torch.uint16), rows_contiguous)
    return as_operand(name, tensor)


def _mask(mask, query):
    """The mask as the numpy layer and the extension take it (see _arrays.as_mask); a bfloat16
    tensor as its tagged bits, widened for a float64 query (which computes in float64 only)."""
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bfloat16:
        if query.dtype == torch.float64:
            return as_mask("mask", mask.double(), np.float64)
        return as_bfloat16_bits("mask", mask.view(torch.uint16), rows_contiguous=False)
    # For a bfloat16 query, float32 stands in as the query's numpy dtype: int and list masks of
    # a 16-bit query are read as float32 (_arrays._mask_dtype), and a float mask is kept as is.
    query_dtype = np.float32 if query.dtype == torch.bfloat16 else _NUMPY[query.dtype]
    return as_mask("mask", mask, query_dtype)


_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
          torch.float16: np.dtype(np.float16)}


def _tensor(array):
    """A result of the extension as a tensor sharing its memory: uint16 results are the bits of
    bfloat16 ones."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if array.dtype == np.uint16 else tensor


def _argument(name, value):
    """mask, alibi_slopes, sinks or cu_seqlens: a tensor detached (read through DLPack), anything
    else as it is, for the numpy layer to read."""
    return _on_cpu(name, value) if isinstance(value, torch.Tensor) else value


class _Attention(torch.autograd.Function):
    """out = softmax(scale · Q Kᵀ + mask) V (and the variants) with gradients for query, key,
    value and sinks."""

    @staticmethod
    def forward(ctx, query, key, value, mask, sinks, keywords):
        q, k, v = _operand("query", query), _operand("key", key), _operand("value", value)
        # mask (bool or float, any dtype the numpy layer takes) and alibi_slopes get no gradient;
        # those that are not tensors (numpy arrays, lists) are the numpy layer's to read.
        m, s = _argument("mask", mask), _argument("sinks", sinks)
        keywords = {name: _argument(name, x) for name, x in keywords.items()}
        arrays = [_array(name, x) for name, x in (("query", q), ("key", k), ("value", v))]
        mask_array = None if m is None else _mask(m, q)
        # One Options for the forward and the backward, with one seed: the caller's, or one drawn
        # here.
        options = make_options(q, mask=mask_array, sinks=s, **keywords)
        out, lse = map(_tensor, _sdpa.forward(*arrays, options, True))  # no copy: shared memory
        # Tensors go through save_for_backward, which catches in-place changes before backward.
        inputs = [x for x in (m, s) if isinstance(x, torch.Tensor)]
        ctx.save_for_backward(q, k, v, out, lse, *inputs)
        ctx.sinks_dtype = sinks.dtype if isinstance(sinks, torch.Tensor) else None
        ctx.with_sinks = sinks is not None
        ctx.options = options
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, *_ = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        needs_sinks = ctx.needs_input_grad[4]
        if not (any(needs) or needs_sinks):
            return (None,) * 6
        with python_names():
            arrays = tuple(_array(name, x) for name, x in (
                ("grad_out", grad_out.detach()), ("query", q), ("key", k), ("value", v),
                ("out", out.detach()), ("lse", lse)))
            grads = gradients(arrays, ctx.options, ctx.with_sinks)
        grad_sinks = _tensor(grads[3]).to(ctx.sinks_dtype) if needs_sinks else None
        grads = [_tensor(g) if need else None for g, need in zip(grads[:3], needs)]
        return (*grads, None, grad_sinks, None)


@python_names()
@with_variants()
def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
              mask: Optional[Union[torch.Tensor, npt.ArrayLike]] = None, causal: Causal = None,
              scale: Optional[Real] = None, backend: Backend = None,
              **variants: Unpack[Variants]) -> torch.Tensor:
    """``sdpa.attention`` on CPU torch tensors, differentiable in ``query``, ``key``, ``value``
    and ``sinks``.

    - ``query`` ``(B, H, Lq, D)``, ``key`` ``(B, Hkv, Lkv, D)``, ``value`` ``(B, Hkv, Lkv, Dv)``
      (or 3-D ``(H, L, D)``, or 2-D ``(L, D)``), CPU tensors of float32, bfloat16 or float16
      (``key`` and ``value`` of one dtype, which may differ from the query's), or all float64.
      GQA/MQA when ``H % Hkv == 0`` (query head ``h`` reads kv head ``h // (H // Hkv)``, as
      PyTorch's ``enable_gqa=True``); ``key.grad`` and ``value.grad`` then sum over the group.
    - ``mask``: bool (True = attend) or float (added to the scaled scores), broadcastable to
      ``(B, H, Lq, Lkv)``; a tensor or anything numpy reads. It gets no gradient.
    - ``causal``: ``None``, ``"top_left"`` (PyTorch's ``is_causal=True``: key ``j`` visible to
      query ``i`` iff ``j <= i``) or ``"bottom_right"`` (iff ``j <= i + Lkv - Lq``). Combines
      with ``mask``.
    - ``scale``: default ``1 / sqrt(D)``. ``backend``: as for ``sdpa.attention``.
    - ``window``, ``alibi_slopes``, ``softcap``, ``sinks``, ``cu_seqlens_q``, ``cu_seqlens_k``,
      ``dropout_p``, ``seed``: the variants of ``sdpa.attention``, with the same rules; the
      array-likes may be tensors. ``sinks`` (shape ``(H,)``) is differentiable: a tensor with
      ``requires_grad=True`` gets ``sinks.grad``. ``alibi_slopes`` gets no gradient.
    - ``dropout_p``: applied whenever it is > 0 (pass ``p if self.training else 0.0`` from a
      module). ``seed=None`` draws a fresh seed from ``secrets.randbits(64)`` for each call; the
      backward reuses the call's seed, so the gradient is that of the dropped-out forward.

    Returns ``out`` ``(B, H, Lq, Dv)``, a tensor of the query's dtype; each gradient has its
    input's dtype. bfloat16 and float16 compute in float32 (docs/semantics.md, 13.9; tensors
    cross as they are, bfloat16 as its bits, with no copy). A row with no visible key
    gives 0 and contributes no gradient. Double backward is not supported (RuntimeError).
    Errors are those of ``sdpa.attention`` (ValueError for shapes and options, TypeError for
    dtypes), raised when the function is called.

    >>> import torch, sdpa.torch
    >>> q = torch.randn(2, 4, 5, 8, dtype=torch.float64, requires_grad=True)  # (B, H, L, D)
    >>> k = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)  # 2 kv heads
    >>> v = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    >>> out = sdpa.torch.attention(q, k, v, causal="top_left")
    >>> out.sum().backward()
    >>> q.grad.shape, k.grad.shape, v.grad.shape
    (torch.Size([2, 4, 5, 8]), torch.Size([2, 2, 5, 8]), torch.Size([2, 2, 5, 8]))

    The same gradients as PyTorch's own attention:

    >>> import torch.nn.functional as F
    >>> grads = torch.autograd.grad(F.scaled_dot_product_attention(
    ...     q, k, v, is_causal=True, enable_gqa=True).sum(), (q, k, v))
    >>> all(torch.allclose(g, x.grad) for g, x in zip(grads, (q, k, v)))
    True

    Learned attention sinks (one logit per query head) get their gradient:

    >>> sinks = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    >>> sdpa.torch.attention(q, k, v, causal="top_left", sinks=sinks).sum().backward()
    >>> sinks.grad.shape
    torch.Size([4])
    """
    sinks = variants.pop("sinks", None)  # an input of the Function: it has a gradient
    keywords = dict(variants, causal=causal, scale=scale, backend=backend)
    return _Attention.apply(query, key, value, mask, sinks, keywords)


attention.__module__ = "sdpa.torch"
