"""Attention over one sequence split across MPI ranks: ring attention and DeepSpeed-Ulysses,
exact, forward and backward (include/sdpa/distributed.h; docs/distributed.md).

Each rank calls with its shard of the sequence, numpy float32 arrays ``(batch, heads, n, dim)``
(rank 2 and 3 arrays get leading size-1 dims), and gets its rows of the result::

    ring_attention(q, k, v, *, comm=None, layout="zigzag", is_causal=False, scale=None,
                   softcap=None, sinks=None, return_lse=False)
    ulysses_attention(q, k, v, *, comm=None, layout="contiguous", ...)       (same keywords)
    ring_attention_backward(grad_out, q, k, v, out, lse, *, comm=None, ...)  -> (dq, dk, dv)
    ulysses_attention_backward(...)
    shard(full, rank, world, layout="zigzag", axis=-2) / unshard(shards, layout, axis=-2)

``comm`` is an mpi4py communicator (default ``MPI.COMM_WORLD``). ``layout``: "contiguous" (rank r
holds the r-th run of rows, shards may differ in length) or "zigzag" (the sequence in 2P equal
chunks; rank r holds chunks r and 2P-1-r: equal causal work on every rank; needs
L % 2P == 0). With PyTorch installed, torch tensors go through a torch.autograd.Function whose
backward is ring_attention_backward, so a training step runs across ranks.

Needs mpi4py and an sdpa built with MPI (``sdpa.distributed.available()``).
"""

from __future__ import annotations

import importlib
from typing import Any, List, Optional, Sequence

import numpy as np

try:
    _sdpa_mpi: Any = importlib.import_module("sdpa._sdpa_mpi")
except ImportError:  # built without MPI
    _sdpa_mpi = None

__all__ = ["available", "ring_attention", "ring_attention_backward", "shard", "ulysses_attention",
           "ulysses_attention_backward", "unshard"]


def available() -> bool:
    """True when sdpa was built with MPI and mpi4py imports."""
    if _sdpa_mpi is None:
        return False
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _comm(comm):
    if _sdpa_mpi is None:
        raise RuntimeError("sdpa was built without MPI: install Open MPI (scripts/setup.sh) and "
                           "reinstall sdpa")
    if comm is None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    return comm.py2f()


def _rank4(name, x):
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise TypeError(f"sdpa: {name}.dtype is {a.dtype} but must be float32")
    if not 2 <= a.ndim <= 4:
        raise ValueError(f"sdpa: {name} has rank {a.ndim} but must have rank 2, 3 or 4")
    return a.reshape((1,) * (4 - a.ndim) + a.shape), a.ndim


def _sinks(sinks):
    return [] if sinks is None else [float(s) for s in sinks]


def _forward(algorithm, q, k, v, comm, layout, is_causal, scale, softcap, sinks, return_lse):
    if _is_torch(q):
        out = _torch_function().apply(q, k, v, comm, layout, bool(is_causal), scale, softcap,
                                      sinks, algorithm)
        return out
    handle = _comm(comm)
    (q4, ndim), (k4, _), (v4, _) = _rank4("query", q), _rank4("key", k), _rank4("value", v)
    out, lse = _sdpa_mpi.forward(handle, q4, k4, v4, layout, bool(is_causal), scale,
                                 softcap, _sinks(sinks), algorithm)
    out = out.reshape(out.shape[4 - ndim:])
    lse = lse.reshape(lse.shape[4 - ndim:])
    return (out, lse) if return_lse else out


def _backward(algorithm, grad_out, q, k, v, out, lse, comm, layout, is_causal, scale, softcap,
              sinks):
    handle = _comm(comm)
    (q4, ndim), (k4, _), (v4, _) = _rank4("query", q), _rank4("key", k), _rank4("value", v)
    (o4, _), (d4, _) = _rank4("out", out), _rank4("grad_out", grad_out)
    l4 = np.asarray(lse, dtype=np.float32)
    l4 = l4.reshape((1,) * (3 - l4.ndim) + l4.shape)
    grads = _sdpa_mpi.backward(handle, d4, q4, k4, v4, o4, l4, layout, bool(is_causal),
                               scale, softcap, _sinks(sinks), algorithm)
    return tuple(g.reshape(g.shape[4 - ndim:]) for g in grads)


def ring_attention(q, k, v, *, comm=None, layout: str = "zigzag", is_causal: bool = False,
                   scale: Optional[float] = None, softcap: Optional[float] = None,
                   sinks: Optional[Sequence[float]] = None, return_lse: bool = False):
    """This rank's rows of softmax(scale·QKᵀ)V over the full sequence (ring attention).
    Returns out ``(.., n, Dv)`` or (out, lse ``(.., n)``) with return_lse. Collective."""
    return _forward("ring", q, k, v, comm, layout, is_causal, scale, softcap, sinks, return_lse)


def ulysses_attention(q, k, v, *, comm=None, layout: str = "contiguous", is_causal: bool = False,
                      scale: Optional[float] = None, softcap: Optional[float] = None,
                      sinks: Optional[Sequence[float]] = None, return_lse: bool = False):
    """As ring_attention, by all-to-all over heads: heads and kv_heads must divide by the number
    of ranks."""
    return _forward("ulysses", q, k, v, comm, layout, is_causal, scale, softcap, sinks,
                    return_lse)


def ring_attention_backward(grad_out, q, k, v, out, lse, *, comm=None, layout: str = "zigzag",
                            is_causal: bool = False, scale: Optional[float] = None,
                            softcap: Optional[float] = None,
                            sinks: Optional[Sequence[float]] = None):
    """(grad_query, grad_key, grad_value) of this rank's shard; out and lse from
    ring_attention(..., return_lse=True) with the same arguments."""
    return _backward("ring", grad_out, q, k, v, out, lse, comm, layout, is_causal, scale,
                     softcap, sinks)


def ulysses_attention_backward(grad_out, q, k, v, out, lse, *, comm=None,
                               layout: str = "contiguous", is_causal: bool = False,
                               scale: Optional[float] = None, softcap: Optional[float] = None,
                               sinks: Optional[Sequence[float]] = None):
    """The gradients of ulysses_attention."""
    return _backward("ulysses", grad_out, q, k, v, out, lse, comm, layout, is_causal, scale,
                     softcap, sinks)


def _positions(seq_len, rank, world, layout):
    if layout == "zigzag":
        if seq_len % (2 * world):
            raise ValueError(f"sdpa: seq_len is {seq_len} but the zigzag layout needs a multiple "
                             f"of 2·world = {2 * world}")
        half = seq_len // (2 * world)
        return np.concatenate([np.arange(rank * half, (rank + 1) * half),
                               np.arange((2 * world - 1 - rank) * half,
                                         (2 * world - rank) * half)])
    if layout != "contiguous":
        raise ValueError(f"sdpa: layout is {layout!r} but must be 'zigzag' or 'contiguous'")
    return np.array_split(np.arange(seq_len), world)[rank]


def shard(full, rank: int, world: int, layout: str = "zigzag", axis: int = -2):
    """Rank `rank`'s shard of a full sequence (sdpa::ShardSequence): contiguous splits like
    numpy.array_split, zigzag chunks r and 2P-1-r."""
    full = np.asarray(full)
    return np.take(full, _positions(full.shape[axis], rank, world, layout), axis=axis)


def unshard(shards: Sequence[Any], layout: str = "zigzag", axis: int = -2):
    """The full sequence from every rank's shard, in rank order (sdpa::PlaceShard)."""
    world = len(shards)
    seq_len = sum(np.asarray(s).shape[axis] for s in shards)
    first = np.asarray(shards[0])
    shape = list(first.shape)
    shape[axis] = seq_len
    full = np.empty(shape, dtype=first.dtype)
    for rank, s in enumerate(shards):
        index: List[Any] = [slice(None)] * full.ndim
        index[axis] = _positions(seq_len, rank, world, layout)
        full[tuple(index)] = s
    return full


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


_FUNCTION: Any = None


def _torch_function():
    """A torch.autograd.Function over this module's forward and backward (float32 CPU tensors)."""
    global _FUNCTION
    if _FUNCTION is not None:
        return _FUNCTION
    import torch

    class DistributedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, comm, layout, is_causal, scale, softcap, sinks, algorithm):
            arrays = [t.detach().contiguous().numpy() for t in (q, k, v)]
            out, lse = _forward(algorithm, *arrays, comm, layout, is_causal, scale, softcap,
                                sinks, True)
            ctx.arrays = arrays + [out, lse]
            ctx.call = (comm, layout, is_causal, scale, softcap, sinks, algorithm)
            return torch.from_numpy(out)

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v, out, lse = ctx.arrays
            comm, layout, is_causal, scale, softcap, sinks, algorithm = ctx.call
            dq, dk, dv = _backward(algorithm, grad_out.detach().contiguous().numpy(), q, k, v,
                                   out, lse, comm, layout, is_causal, scale, softcap, sinks)
            return (torch.from_numpy(dq), torch.from_numpy(dk), torch.from_numpy(dv), None, None,
                    None, None, None, None, None)

    _FUNCTION = DistributedAttention
    return _FUNCTION
