"""sdpa: scaled dot-product attention on numpy arrays, computed by the sdpa C++ library.

The seed's functions::

    self_attention(Q, K, V)                 softmax(Q K^T / sqrt(d_k)) V
    compute_qkv(X, W_q, W_k, W_v)           (X W_q, X W_k, X W_v)

PyTorch's function, with its semantics, on numpy arrays (and DLPack tensors)::

    scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False)

The engine in (batch, heads, seq, dim) layout, with both causal alignments and the log-sum-exp::

    attention(query, key, value, *, mask=None, causal=None, scale=None, return_lse=False,
              backend=None, **variants)
    explain(query, key, value, *, mask=None, causal=None, scale=None, backend=None, **variants)
    set_num_threads(n), get_num_threads()

The variants: keywords of attention, explain, attention_backward and sdpa.torch.attention;
scaled_dot_product_attention takes all but the cu_seqlens::

    window=(left, right)               sliding window (None = unbounded side)
    alibi_slopes=[...], sinks=[...]    one value per query head
    softcap=c                          s -> c * tanh(s / c)
    cu_seqlens_q=[...], cu_seqlens_k=[...]    packed variable-length sequences
    dropout_p=p, seed=n                dropout on the weights (Philox4x32-10 from the seed)

Decoding over a key/value cache (contiguous or paged, float32 or int8), appending the new
tokens' keys and values in place first (and sdpa.torch.attention_with_kvcache for tensors)::

    attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens,
                           block_table=None, k_scale=None, v_scale=None, scale=None,
                           is_causal=True, window=None, softcap=None, sinks=None,
                           return_lse=False)

Gradients: attention's backward, and (with PyTorch installed) attention as a
torch.autograd.Function whose forward and backward are computed here::

    attention_backward(grad_out, query, key, value, out, lse, *, mask=None, causal=None,
                       scale=None, backend=None, **variants)
        -> (grad_query, grad_key, grad_value), and grad_sinks with sinks
    sdpa.torch.attention(query, key, value, *, mask=None, causal=None, scale=None, backend=None,
                         **variants)

Merging attention over disjoint key sets (split-KV, cascade and ring attention)::

    merge_partials(outs, lses) -> (out, lse)

Errors: ValueError for shapes and values, TypeError for dtypes and argument types; the message
starts with "sdpa: " and names the argument as the caller wrote it, the expected and the actual
value. Arguments are strict: booleans are bool or numpy.bool_, numbers are real (int, float,
numpy real scalars, 0-d real arrays), never str, bytes, bool or complex.

>>> import sdpa
>>> sdpa.self_attention([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 2], [3, 4]]).round(6)
array([[1.660477, 2.660477],
       [2.339523, 3.339523]])
"""

from ._sdpa import __version__
from ._attention import (attention, attention_backward, explain, get_num_threads,
                         scaled_dot_product_attention, set_num_threads)
from ._kv_cache import attention_with_kvcache
from ._merge import merge_partials
from ._seed import compute_qkv, self_attention

__all__ = [
    "__version__",
    "attention",
    "attention_backward",
    "attention_with_kvcache",
    "compute_qkv",
    "explain",
    "get_num_threads",
    "merge_partials",
    "scaled_dot_product_attention",
    "self_attention",
    "set_num_threads",
]
