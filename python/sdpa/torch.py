"""sdpa.torch: sdpa's attention as a ``torch.autograd.Function``, so PyTorch models train with it.

    attention(query, key, value, *, mask=None, causal=None, scale=None, backend=None)

The forward is ``sdpa.attention(..., return_lse=True)``; it saves ``out`` and ``lse`` (not the
``(Lq, Lkv)`` attention weights). The backward is ``sdpa.attention_backward``, which recomputes the
weights tile by tile from ``lse`` (FlashAttention-2). Tensors cross into the library through
DLPack and the results come back through ``torch.from_numpy``, so neither direction copies
(except an argument whose last dim is not contiguous, which the numpy layer copies once).

This module imports PyTorch; the rest of the package never does. Importing it without PyTorch
installed raises ImportError.
"""

try:
    import torch
except ImportError as e:
    raise ImportError(
        "sdpa.torch needs PyTorch, which could not be imported "
        f"({e}); install it with `pip install torch`. The rest of sdpa works without it."
    ) from e

from torch.autograd.function import once_differentiable

from ._attention import attention as _attention
from ._attention import attention_backward as _attention_backward

__all__ = ["attention"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _on_cpu(name, tensor):
    """`tensor` detached, which the numpy layer reads through DLPack without a copy."""
    if tensor.device.type != "cpu":
        raise ValueError(f"sdpa: {name} is on device {tensor.device} but must be on the CPU "
                         "(sdpa computes on the CPU)")
    return tensor.detach()


def _operand(name, tensor):
    """query, key or value: a float32/float64 CPU tensor, detached. (The numpy layer would turn
    ints into float64; a differentiable function takes floats only, like PyTorch's.)"""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"sdpa: {name} is a {type(tensor).__name__} but must be a torch.Tensor")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"sdpa: {name}.dtype is {tensor.dtype} but must be torch.float32 or "
                        "torch.float64")
    return _on_cpu(name, tensor)


class _Attention(torch.autograd.Function):
    """out = softmax(scale · Q Kᵀ + mask) V with gradients for query, key and value."""

    @staticmethod
    def forward(ctx, query, key, value, mask, causal, scale, backend):
        q, k, v = _operand("query", query), _operand("key", key), _operand("value", value)
        # A mask tensor (bool or float, of any dtype the numpy layer takes) gets no gradient; a
        # mask that is not a tensor (numpy array, nested list) is the numpy layer's to read.
        ctx.mask_is_tensor = isinstance(mask, torch.Tensor)
        m = _on_cpu("mask", mask) if ctx.mask_is_tensor else mask
        out, lse = _attention(q, k, v, mask=m, causal=causal, scale=scale, return_lse=True,
                              backend=backend)
        out, lse = torch.from_numpy(out), torch.from_numpy(lse)  # no copy: they share memory
        # Tensors go through save_for_backward, which catches in-place changes before backward.
        if ctx.mask_is_tensor:
            ctx.save_for_backward(q, k, v, out, lse, m)
        else:
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.mask = m
        ctx.options = dict(causal=causal, scale=scale, backend=backend)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, *rest = ctx.saved_tensors
        mask = rest[0] if ctx.mask_is_tensor else ctx.mask
        needs = ctx.needs_input_grad[:3]
        if not any(needs):
            return (None,) * 7
        grads = _attention_backward(grad_out.detach(), q, k, v, out.detach(), lse, mask=mask,
                                    **ctx.options)
        grads = [torch.from_numpy(g) if need else None for g, need in zip(grads, needs)]
        return (*grads, None, None, None, None)


def attention(query, key, value, *, mask=None, causal=None, scale=None, backend=None):
    """``sdpa.attention`` on CPU torch tensors, differentiable in ``query``, ``key`` and ``value``.

    - ``query`` ``(B, H, Lq, D)``, ``key`` ``(B, Hkv, Lkv, D)``, ``value`` ``(B, Hkv, Lkv, Dv)``
      (or 3-D ``(H, L, D)``, or 2-D ``(L, D)``), CPU tensors of one dtype, float32 or float64.
      GQA/MQA when ``H % Hkv == 0`` (query head ``h`` reads kv head ``h // (H // Hkv)``, as
      PyTorch's ``enable_gqa=True``); ``key.grad`` and ``value.grad`` then sum over the group.
    - ``mask``: bool (True = attend) or float (added to the scaled scores), broadcastable to
      ``(B, H, Lq, Lkv)``; a tensor or anything numpy reads. It gets no gradient.
    - ``causal``: ``None``, ``"top_left"`` (PyTorch's ``is_causal=True``: key ``j`` visible to
      query ``i`` iff ``j <= i``) or ``"bottom_right"`` (iff ``j <= i + Lkv - Lq``). Combines
      with ``mask``.
    - ``scale``: default ``1 / sqrt(D)``. ``backend``: as for ``sdpa.attention``.

    Returns ``out`` ``(B, H, Lq, Dv)``, a tensor of the query's dtype. A row with no visible key
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
    """
    return _Attention.apply(query, key, value, mask, causal, scale, backend)


attention.__module__ = "sdpa.torch"
