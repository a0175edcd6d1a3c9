"""PyTorch's batch broadcasting for scaled_dot_product_attention, mapped onto the library's
[batch, heads, seq, dim] operands with views, not copies, wherever the strides allow.

PyTorch's rule (torch.nn.functional.scaled_dot_product_attention):
  query (*Nq, L, E), key (*Nk, S, E), value (*Nv, S, Ev)  ->  out (*N, L, Ev)
  N = broadcast(Nq, Nk, Nv) with numpy's rule (right-aligned, size 1 stretches);
  attn_mask is added to the scores, whose batch shape is broadcast(Nq, Nk) before value's batch
  dims join: it must broadcast to (*broadcast(Nq, Nk), L, S) without enlarging it;
  enable_gqa=True: dim -3 is the heads dim; key and value heads must divide the query heads and
  query head h reads key/value head h // (Hq // Hk) (repeat_interleave); the dims before -3
  broadcast as above.

The library takes query/key/value of one rank 2..4 with equal batch, kv_heads dividing heads, and a
mask with numpy broadcasting. So here:
  1. the batch dims of query/key/value broadcast with np.broadcast_to (stride-0 views);
  2. up to two batch dims, that already is the library's rank-2/3/4 form: nothing is reshaped and
     the library's messages index the caller's dims; the mask goes as it is;
  3. more batch dims are merged into two, (batch, heads), at a split where every operand's strides
     allow a view (with GQA, ALiBi slopes or sinks the split is before the heads dim); an operand
     for which no split does is copied, of its distinct values only (_merge).
"""

import math

import numpy as np


def _mismatch(name, index, size, other_name, other_index, other_size, hint=""):
    return ValueError(
        f"sdpa: {name}.shape[{index}] is {size} but {other_name}.shape[{other_index}] is "
        f"{other_size}; batch dimensions must be equal or 1 to broadcast{hint}"
    )


def broadcast_batch(named_shapes, hint_last=""):
    """numpy's broadcast of the batch shapes in `named_shapes` [(name, shape)], or ValueError
    naming both arguments. `hint_last` is appended when the last batch dim conflicts."""
    rank = max((len(shape) for _, shape in named_shapes), default=0)
    result = []
    for pos in range(-rank, 0):
        size, owner = 1, None
        for name, shape in named_shapes:
            if -pos > len(shape) or shape[pos] == 1:
                continue
            if size == 1:
                size, owner = shape[pos], (name, len(shape) + pos)
            elif shape[pos] != size:
                raise _mismatch(name, len(shape) + pos, shape[pos], owner[0], owner[1], size,
                                hint_last if pos == -1 else "")
        result.append(size)
    return tuple(result)


def _check_mask(mask, scores_batch, q_len, kv_len):
    """PyTorch adds attn_mask to the scores (*scores_batch, L, S) in place: the mask may not
    enlarge them. Checked here, on the caller's mask, because the library sees it with its batch
    dims merged (and would index those)."""
    if mask.ndim > len(scores_batch) + 2:
        raise ValueError(
            f"sdpa: attn_mask has rank {mask.ndim} but the attention scores have rank "
            f"{len(scores_batch) + 2} (shape {(*scores_batch, 'L', 'S')}); attn_mask must "
            "broadcast to them without adding dimensions"
        )
    for pos, size, what in ((-2, q_len, "q_len"), (-1, kv_len, "kv_len")):
        if mask.ndim >= -pos and mask.shape[pos] not in (1, size):
            raise ValueError(
                f"sdpa: attn_mask.shape[{mask.ndim + pos}] is {mask.shape[pos]} but must be 1 or "
                f"{size} ({what}) to broadcast to the scores' shape "
                f"{(*scores_batch, q_len, kv_len)}"
            )
    mask_batch = mask.shape[:-2]
    for pos in range(-len(mask_batch), 0):
        if mask_batch[pos] not in (1, scores_batch[pos]):
            raise ValueError(
                f"sdpa: attn_mask.shape[{len(mask_batch) + pos}] is {mask_batch[pos]} but must be "
                f"1 or {scores_batch[pos]} to broadcast to the scores' batch shape "
                f"{scores_batch} (query and key broadcast)"
            )


def _repeat_heads(key, value, query_heads):
    """PyTorch's GQA with different key and value head counts: both are repeated (copied) to
    the least common multiple, after which one kv head serves the same query heads for both."""
    key_heads, value_heads = key.shape[-3], value.shape[-3]
    if (key_heads == 0 or value_heads == 0 or query_heads % key_heads
            or query_heads % value_heads):
        raise ValueError(
            f"sdpa: key.shape[{key.ndim - 3}] (kv_heads) is {key_heads} and "
            f"value.shape[{value.ndim - 3}] is {value_heads}; with enable_gqa=True each must "
            f"divide the query heads, {query_heads}"
        )
    heads = math.lcm(key_heads, value_heads)
    return (np.repeat(key, heads // key_heads, axis=-3),
            np.repeat(value, heads // value_heads, axis=-3))


def _mergeable(array, lo, hi):
    """True when dims [lo, hi) of `array` can be merged into one strided dim (a view)."""
    dims = [(array.shape[d], array.strides[d]) for d in range(lo, hi)]
    if any(size == 0 for size, _ in dims):
        return True
    dims = [(size, stride) for size, stride in dims if size != 1]
    return all(outer[1] == inner[0] * inner[1] for outer, inner in zip(dims, dims[1:]))


def _split(arrays, batch_ndim, candidates):
    """The first split p of the batch dims into [0, p) and [p, n) that keeps every array a view,
    else the first candidate (np.reshape then copies where it must)."""
    for p in candidates:
        if all(_mergeable(a, 0, p) and _mergeable(a, p, batch_ndim) for a in arrays):
            return p
    return candidates[0]


def _merged_shape(shape, batch_ndim, p):
    return (math.prod(shape[:p]), math.prod(shape[p:batch_ndim])) + shape[batch_ndim:]


def _merge(array, batch_ndim, p):
    """Dims [0, p) and [p, batch_ndim) of `array` merged into one each: a view when the strides
    allow. Otherwise a copy, but of the distinct values only: a group of dims that is broadcast
    as a whole (all stride 0) and the broadcast dims after the batch are copied at size 1 and
    broadcast again (stride 0), so a mask broadcast over most batch dims is not materialised."""
    merged = _merged_shape(array.shape, batch_ndim, p)
    if _mergeable(array, 0, p) and _mergeable(array, p, batch_ndim):
        return array.reshape(merged)
    shape, strides = array.shape, array.strides
    distinct = [slice(None)] * array.ndim
    for lo, hi in ((0, p), (p, batch_ndim)):
        if all(strides[d] == 0 or shape[d] == 1 for d in range(lo, hi)):
            distinct[lo:hi] = [slice(0, 1)] * (hi - lo)
    for d in range(batch_ndim, array.ndim):
        if strides[d] == 0 and shape[d] > 1:
            distinct[d] = slice(0, 1)
    core = array[tuple(distinct)]
    return np.broadcast_to(core.reshape(_merged_shape(core.shape, batch_ndim, p)), merged)


def to_engine(query, key, value, mask, enable_gqa, heads_last=False):
    """Operands for the library's forward() and the shape of the result.

    query, key, value: arrays of rank >= 2; mask: None or an array. heads_last: the engine's heads
    must be dim -3 of the result (per-head ALiBi slopes and sinks), so more than two batch dims
    are merged before it. Returns (query, key, value, mask, out_shape): operands of rank 2..4 and
    the caller's output shape.
    """
    for name, a in (("query", query), ("key", key), ("value", value)):
        if a.ndim < 2:
            raise ValueError(
                f"sdpa: {name} has rank {a.ndim} but must have rank >= 2 (..., seq, dim)")

    if enable_gqa:
        for name, a in (("query", query), ("key", key), ("value", value)):
            if a.ndim < 3:
                raise ValueError(f"sdpa: enable_gqa=True needs a heads dimension at -3 but {name} "
                                 f"has rank {a.ndim}")
        if key.shape[-3] != value.shape[-3]:
            key, value = _repeat_heads(key, value, query.shape[-3])
        named = [("query", query.shape[:-3]), ("key", key.shape[:-3]),
                 ("value", value.shape[:-3])]
        outer = broadcast_batch(named)
        scores_batch = broadcast_batch(named[:2]) + (query.shape[-3],)
        batch = outer + (query.shape[-3],)
        kv_batch = outer + (key.shape[-3],)
    else:
        hint = " (for grouped-query attention pass enable_gqa=True)"
        named = [("query", query.shape[:-2]), ("key", key.shape[:-2]),
                 ("value", value.shape[:-2])]
        batch = broadcast_batch(named, hint_last=hint)
        scores_batch = broadcast_batch(named[:2], hint_last=hint)
        kv_batch = batch
    query = np.broadcast_to(query, batch + query.shape[-2:])
    key = np.broadcast_to(key, kv_batch + key.shape[-2:])
    value = np.broadcast_to(value, kv_batch + value.shape[-2:])
    out_shape = batch + (query.shape[-2], value.shape[-1])

    if mask is not None:
        _check_mask(mask, scores_batch, query.shape[-2], key.shape[-2])

    n = len(batch)
    if n <= 2:
        if mask is not None and mask.ndim == 0:
            mask = mask.reshape(1)
        return query, key, value, mask, out_shape

    if mask is not None:
        padded_mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
        mask = np.broadcast_to(padded_mask, batch + padded_mask.shape[-2:])
    operands = [a for a in (query, key, value, mask) if a is not None]
    candidates = [n - 1]
    if not (enable_gqa or heads_last):
        candidates += list(range(n - 2, -1, -1)) + [n]
    p = _split(operands, n, candidates)
    query, key, value = (_merge(a, n, p) for a in (query, key, value))
    if mask is not None:
        mask = _merge(mask, n, p)
    return query, key, value, mask, out_shape
