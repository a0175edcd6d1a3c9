"""sdpa.attention_with_kvcache (issue 15, docs/semantics.md §15) against a float64 numpy
reference written here: gather each sequence's keys from the cache (contiguous or through its
block table), append the new tokens, and do softmax attention over them with the queries at the
end of the sequence. Also: what is written where (in place, int8 quantization as the C++ does
it), torch tensors, and every error, each raised before anything in the cache changes."""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import pytest

import sdpa
from sdpa_reference import TOLERANCE, assert_close


# ---- The reference ---------------------------------------------------------------------------

def reference_decode(q, keys, values, causal=True, scale=None, window=None, softcap=None,
                     sinks=None):
    """(out, lse) in float64 for one sequence: q (Hq, Lq, D), keys (Hkv, n, D), values
    (Hkv, n, Dv), the Lq queries at positions n - Lq .. n - 1 (bottom-right).

    pass 1: s = scale·q·k, softcap c·tanh(s/c); pass 2: remove keys past the query (causal) or
    outside diag - left <= j <= diag + right (window, diag = n - Lq + i); pass 3: softmax whose
    denominator includes exp(sinks[h]); a row that sees nothing gives out = 0, lse = -inf (its
    sink with sinks)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, keys, values))
    heads, q_len, head_dim = q.shape
    group = heads // k.shape[0]
    k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    n = k.shape[1]
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    s = scale * (q @ np.swapaxes(k, -1, -2))  # (Hq, Lq, n)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    diag = (n - q_len + np.arange(q_len))[:, None]
    j = np.arange(n)[None, :]
    visible = np.ones((q_len, n), dtype=bool)
    if causal:
        visible &= j <= diag
    if window is not None:
        left, right = window
        if left is not None:
            visible &= j >= diag - left
        if right is not None:
            visible &= j <= diag + right
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if n else np.full((heads, q_len, 1), -np.inf)
    if sinks is not None:
        m = np.maximum(m, np.asarray(sinks, dtype=np.float64)[:, None, None])
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    total = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        total = total + np.exp(np.asarray(sinks, dtype=np.float64)[:, None, None] - m)
    out = (p @ v) / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(total))[..., 0]
    return out, lse


# ---- Caches ------------------------------------------------------------------------------------

def quantize(x):
    """int8 rows and float32 scales as the library appends them (sdpa/kv_cache.h): per row (the
    last axis), scale = float32(max|x| / 127), q = round_half_even(x / scale) clamped to ±127;
    a zero row gets scale 0 and zeros."""
    x = np.asarray(x, dtype=np.float64)
    step = (np.abs(x).max(axis=-1) / 127.0).astype(np.float32)
    divisor = np.where(step > 0, step, 1).astype(np.float64)[..., None]
    stored = np.where(step[..., None] > 0, np.rint(x / divisor), 0.0)
    return np.clip(stored, -127, 127).astype(np.int8), step


@dataclasses.dataclass
class Case:
    """One call: B sequences of lens[b] cached tokens, heads/kv_heads query/kv heads, q_len new
    tokens (appended when append), a contiguous cache of max_len slots or (block_size) a paged
    one with max_blocks blocks per sequence, physical ids shuffled when shuffle."""

    name: str
    lens: List[int]
    heads: int = 4
    kv_heads: int = 2
    q_len: int = 1
    head_dim: int = 16
    v_dim: int = 16
    append: bool = True
    max_len: int = 40
    block_size: Optional[int] = None
    shuffle: bool = False
    dtype: str = "float32"  # of the cache: float32 or int8

    @property
    def batch(self):
        return len(self.lens)


class Cache:
    """The arrays of a Case: logical float64 keys/values [B, Hkv, capacity, D] (what the cache
    holds), the physical cache arrays derived from them, and the block table."""

    def __init__(self, rng, case: Case):
        self.case = c = case
        if c.block_size is None:
            self.capacity = c.max_len
        else:
            self.max_blocks = -(-c.max_len // c.block_size)
            self.capacity = self.max_blocks * c.block_size
        shape = (c.batch, c.kv_heads, self.capacity)
        self.keys = rng.uniform(-1.7, 1.7, shape + (c.head_dim,))
        self.values = rng.uniform(-1.7, 1.7, shape + (c.v_dim,))
        if c.dtype == "int8":
            k8, ks = quantize(self.keys)
            v8, vs = quantize(self.values)
            self.keys = k8 * ks[..., None].astype(np.float64)  # what the int8 cache holds
            self.values = v8 * vs[..., None].astype(np.float64)
            logical = [k8, v8, ks, vs]
        else:
            self.keys = self.keys.astype(np.float32).astype(np.float64)
            self.values = self.values.astype(np.float32).astype(np.float64)
            logical = [self.keys.astype(np.float32), self.values.astype(np.float32)]
        if c.block_size is None:
            self.block_table = None
            physical = logical
        else:
            blocks = c.batch * self.max_blocks + 1  # one spare, never used
            ids = np.arange(blocks, dtype=np.int32)
            if c.shuffle:
                ids = rng.permutation(ids).astype(np.int32)
            self.block_table = ids[:c.batch * self.max_blocks].reshape(c.batch, self.max_blocks)
            physical = [self._paged(a, blocks) for a in logical]
        self.k_cache, self.v_cache = physical[:2]
        self.k_scale, self.v_scale = (physical[2:] if c.dtype == "int8" else (None, None))

    def _paged(self, logical, blocks):
        """A logical [B, Hkv, capacity, ...] array laid out in blocks [blocks, Hkv, bs, ...]."""
        c = self.case
        paged = np.zeros((blocks, c.kv_heads, c.block_size) + logical.shape[3:], logical.dtype)
        for b in range(c.batch):
            for n in range(self.max_blocks):
                rows = slice(n * c.block_size, (n + 1) * c.block_size)
                paged[self.block_table[b, n]] = logical[b, :, rows]
        return paged

    def gather(self, array, b, n):
        """Tokens 0 .. n-1 of sequence b of a physical cache array, [Hkv, n, ...]."""
        if self.block_table is None:
            return array[b, :, :n]
        bs = self.case.block_size
        rows = [array[self.block_table[b, j // bs], :, j % bs] for j in range(n)]
        return np.stack(rows, axis=1) if rows else array[0, :, :0]

    def arrays(self):
        """The physical arrays, for checking that nothing changed."""
        return [a for a in (self.k_cache, self.v_cache, self.k_scale, self.v_scale)
                if a is not None]

    def call_kwargs(self):
        kwargs = dict(cache_seqlens=np.array(self.case.lens, dtype=np.int32),
                      block_table=self.block_table)
        if self.case.dtype == "int8":
            kwargs.update(k_scale=self.k_scale, v_scale=self.v_scale)
        return kwargs


def run_case(rng, case, **options):
    """Calls attention_with_kvcache on a fresh Cache and compares out and lse with the reference
    on the gathered sequences; returns (cache, new keys, new values)."""
    c = case
    cache = Cache(rng, c)
    q = rng.uniform(-1.7, 1.7, (c.batch, c.heads, c.q_len, c.head_dim)).astype(np.float32)
    k = rng.uniform(-1.7, 1.7, (c.batch, c.kv_heads, c.q_len, c.head_dim)).astype(np.float32)
    v = rng.uniform(-1.7, 1.7, (c.batch, c.kv_heads, c.q_len, c.v_dim)).astype(np.float32)
    new = (k, v) if c.append else (None, None)
    out, lse = sdpa.attention_with_kvcache(q, cache.k_cache, cache.v_cache, *new,
                                           **cache.call_kwargs(), return_lse=True, **options)
    assert out.shape == (c.batch, c.heads, c.q_len, c.v_dim) and out.dtype == np.float32
    assert lse.shape == (c.batch, c.heads, c.q_len) and lse.dtype == np.float32
    ref_options = dict(options)
    ref_options["causal"] = ref_options.pop("is_causal", True)
    for b, cached in enumerate(c.lens):
        keys, values = cache.keys[b, :, :cached], cache.values[b, :, :cached]
        if c.append:
            if c.dtype == "int8":
                (k8, ks), (v8, vs) = quantize(k[b]), quantize(v[b])
                kb, vb = k8 * ks[..., None].astype(np.float64), v8 * vs[..., None].astype(
                    np.float64)
            else:
                kb, vb = k[b], v[b]
            keys = np.concatenate([keys, kb], axis=1)
            values = np.concatenate([values, vb], axis=1)
        ref_out, ref_lse = reference_decode(q[b], keys, values, **ref_options)
        assert_close(out[b], ref_out, what=f"{c.name}: out[{b}]")
        assert_close(lse[b], ref_lse, what=f"{c.name}: lse[{b}]")
    return cache, k, v


CASES = [
    Case("decode", lens=[5, 17, 1]),
    Case("decode, a sequence with nothing cached", lens=[0, 9]),
    Case("speculative Lq=4", lens=[12, 3], q_len=4),
    Case("chunked prefill", lens=[7, 0], q_len=25, max_len=40),
    Case("MQA", lens=[6, 11], heads=8, kv_heads=1, q_len=2),
    Case("no GQA, odd dims", lens=[4, 9], heads=3, kv_heads=3, head_dim=7, v_dim=5, q_len=3),
    Case("attend to the cache only", lens=[5, 13], q_len=3, append=False),
    Case("paged block 1", lens=[5, 0, 8], block_size=1, max_len=12),
    Case("paged block 16", lens=[20, 33], q_len=4, block_size=16, max_len=48),
    Case("paged block 16 shuffled", lens=[20, 33, 0], q_len=4, block_size=16, max_len=48,
         shuffle=True),
    Case("paged block 3 shuffled, a full sequence", lens=[17, 2], q_len=1, block_size=3,
         max_len=18, shuffle=True),
    Case("int8 decode", lens=[5, 17], dtype="int8"),
    Case("int8 speculative paged", lens=[30, 0], q_len=4, block_size=16, max_len=48,
         shuffle=True, dtype="int8"),
    Case("int8 attend only", lens=[9, 4], q_len=2, append=False, dtype="int8"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_the_reference_and_appends_in_place(case):
    before = Cache(np.random.default_rng(7), case)  # the cache run_case starts from
    cache, k, v = run_case(np.random.default_rng(7), case)
    for b, cached in enumerate(case.lens):
        n = cached + case.q_len if case.append else cached
        if case.append:  # the new tokens are in the cache, after the cached ones
            got_k = cache.gather(cache.k_cache, b, n)[:, cached:]
            got_v = cache.gather(cache.v_cache, b, n)[:, cached:]
            if case.dtype == "int8":
                (k8, ks), (v8, vs) = quantize(k[b]), quantize(v[b])
                np.testing.assert_array_equal(got_k, k8)
                np.testing.assert_array_equal(got_v, v8)
                np.testing.assert_array_equal(cache.gather(cache.k_scale, b, n)[:, cached:], ks)
                np.testing.assert_array_equal(cache.gather(cache.v_scale, b, n)[:, cached:], vs)
            else:
                np.testing.assert_array_equal(got_k, k[b])
                np.testing.assert_array_equal(got_v, v[b])
    # Everything else is as it was: restore the appended rows from `before` and compare.
    for b, cached in enumerate(case.lens):
        if not case.append:
            continue
        for j in range(cached, cached + case.q_len):
            for now, was in zip(cache.arrays(), before.arrays()):
                if case.block_size is None:
                    now[b, :, j] = was[b, :, j]
                else:
                    block = cache.block_table[b, j // case.block_size]
                    now[block, :, j % case.block_size] = was[block, :, j % case.block_size]
    for now, was in zip(cache.arrays(), before.arrays()):
        np.testing.assert_array_equal(now, was)


OPTIONS = [
    ("causal off", dict(is_causal=False)),
    ("window (3, 0)", dict(window=(3, 0))),
    ("window (2, 1), not causal", dict(window=(2, 1), is_causal=False)),
    ("softcap", dict(softcap=2.0, scale=1.5)),
    ("sinks", dict(sinks=[0.5, -1.0, 2.0, -np.inf])),
    ("scale", dict(scale=0.3)),
]


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("name, options", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_options(rng, layout, name, options):
    block = {"contiguous": None, "paged": 4}[layout]
    run_case(rng, Case(name, lens=[6, 0, 13], q_len=3, block_size=block, shuffle=True),
             **options)


def test_append_then_attend_equals_attend_over_the_prefilled_cache(rng):
    """Appending k/v and attending gives bitwise the result of attending (append=None) to a
    cache that already holds them, paged or not, and leaves the same cache behind."""
    for block in (None, 16):
        for dtype in ("float32", "int8"):
            c = Case("prefilled", lens=[20, 3], q_len=4, block_size=block, max_len=48,
                     dtype=dtype, shuffle=True)
            seed = int(rng.integers(2**32))
            appended, prefilled = Cache(np.random.default_rng(seed), c), Cache(
                np.random.default_rng(seed), c)
            q = rng.standard_normal((c.batch, c.heads, c.q_len, c.head_dim), dtype=np.float32)
            k = rng.standard_normal((c.batch, c.kv_heads, c.q_len, c.head_dim), dtype=np.float32)
            v = rng.standard_normal((c.batch, c.kv_heads, c.q_len, c.v_dim), dtype=np.float32)
            out1 = sdpa.attention_with_kvcache(q, appended.k_cache, appended.v_cache, k, v,
                                               **appended.call_kwargs())
            # Prefill the same tokens with a call of its own (queries that attend to nothing
            # wanted here), then attend with the lengths advanced.
            sdpa.attention_with_kvcache(np.zeros_like(q), prefilled.k_cache, prefilled.v_cache,
                                        k, v, **prefilled.call_kwargs())
            kwargs = prefilled.call_kwargs()
            kwargs["cache_seqlens"] = kwargs["cache_seqlens"] + c.q_len
            out2 = sdpa.attention_with_kvcache(q, prefilled.k_cache, prefilled.v_cache,
                                               **kwargs)
            np.testing.assert_array_equal(out1, out2)
            for a, b in zip(appended.arrays(), prefilled.arrays()):
                np.testing.assert_array_equal(a, b)


def test_decode_loop_equals_attention_over_the_whole_sequence(rng):
    """Ten decode steps, one token each, equal sdpa.attention (bottom-right causal) of each step's
    query over all the keys so far."""
    heads, kv_heads, dim, steps = 4, 2, 8, 10
    k_cache = np.zeros((1, kv_heads, steps, dim), np.float32)
    v_cache = np.zeros_like(k_cache)
    keys = rng.standard_normal((1, kv_heads, steps, dim), dtype=np.float32)
    values = rng.standard_normal((1, kv_heads, steps, dim), dtype=np.float32)
    queries = rng.standard_normal((1, heads, steps, dim), dtype=np.float32)
    for t in range(steps):
        out = sdpa.attention_with_kvcache(queries[:, :, t:t + 1], k_cache, v_cache,
                                          keys[:, :, t:t + 1], values[:, :, t:t + 1],
                                          cache_seqlens=[t])
        q64 = queries[0, :, t:t + 1]
        ref, _ = reference_decode(q64, keys[0, :, :t + 1], values[0, :, :t + 1])
        assert_close(out[0], ref, what=f"step {t}")
    np.testing.assert_array_equal(k_cache, keys)
    np.testing.assert_array_equal(v_cache, values)


def test_int8_error_against_the_float_values_is_bounded(rng):
    """What an int8 cache adds (docs/semantics.md §15): attention on the int8 cache against
    attention on the float32 values it was quantized from, at most 2e-3·max|V| (the C++ bound of
    KvCache.Int8ErrorIsBoundedAndMeasured, same shapes: 2048 keys, D = 128, GQA 4)."""
    batch, heads, kv_heads, dim, n = 2, 8, 2, 128, 2048
    keys = rng.uniform(-1.7, 1.7, (batch, kv_heads, n, dim)).astype(np.float32)
    values = rng.uniform(-1.7, 1.7, (batch, kv_heads, n, dim)).astype(np.float32)
    q = rng.uniform(-1.7, 1.7, (batch, heads, 1, dim)).astype(np.float32)
    k8, ks = quantize(keys)
    v8, vs = quantize(values)
    lens = np.array([n, n // 2], np.int32)
    out = sdpa.attention_with_kvcache(q, k8, v8, cache_seqlens=lens, k_scale=ks, v_scale=vs)
    for b in range(batch):
        exact, _ = reference_decode(q[b, :, :], keys[b, :, :lens[b]], values[b, :, :lens[b]])
        error = np.abs(out[b] - exact).max() / 1.7
        assert error <= 2e-3, f"sequence {b}: int8 error / max|V| is {error:.3g}"


def test_float16_cache_once_the_array_layer_passes_it(rng):
    """A float16 cache with float32 queries (the library computes it, §13.9); skips where the
    Python array layer does not pass float16 arrays to the extension (before issue 13)."""
    try:
        sdpa.attention(np.zeros((2, 8), np.float16), np.zeros((2, 8), np.float16),
                       np.zeros((2, 8), np.float16))
    except TypeError:
        pytest.skip("this build's Python layer does not pass float16 arrays yet")
    c = Case("float16", lens=[5, 9])
    cache = Cache(rng, c)
    k_cache, v_cache = cache.k_cache.astype(np.float16), cache.v_cache.astype(np.float16)
    q = rng.uniform(-1.7, 1.7, (c.batch, c.heads, 1, c.head_dim)).astype(np.float32)
    out = sdpa.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=c.lens)
    # P is rounded to float16 before P·V (§13.9); its bound for float32 queries on a 16-bit
    # cache is 2e-3·max|V| against the float64 reference on the same (rounded) values.
    bound = 2e-3 * float(np.abs(v_cache).max())
    for b, n in enumerate(c.lens):
        ref, _ = reference_decode(q[b], k_cache[b, :, :n], v_cache[b, :, :n])
        assert_close(out[b], ref, atol=bound, rtol=0, what=f"out[{b}]")


def test_results_do_not_depend_on_the_thread_count(rng):
    c = Case("threads", lens=[300, 41], q_len=2, block_size=16, max_len=320, shuffle=True)
    cache = Cache(rng, c)
    q = rng.standard_normal((c.batch, c.heads, c.q_len, c.head_dim), dtype=np.float32)
    kwargs = cache.call_kwargs()
    try:
        results = []
        for threads in (1, 2, 3):
            sdpa.set_num_threads(threads)
            results.append(sdpa.attention_with_kvcache(q, cache.k_cache, cache.v_cache,
                                                       **kwargs))
    finally:
        sdpa.set_num_threads(0)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_cache_views_and_argument_forms(rng):
    """A cache that is a strided view of a bigger buffer is written through the view; lengths
    and block tables may be lists or int64 arrays; booleans may be numpy bools."""
    k_buffer = np.zeros((2, 2, 10, 12), np.float32)  # rows of 12 floats, 8 of them the cache
    v_buffer = np.zeros((2, 10, 2, 8), np.float32)  # (batch, max_len, kv heads, dim) memory
    k_cache, v_cache = k_buffer[..., 2:10], v_buffer.transpose(0, 2, 1, 3)
    q = rng.standard_normal((2, 4, 1, 8), dtype=np.float32)
    k = rng.standard_normal((2, 2, 1, 8), dtype=np.float32)
    v = rng.standard_normal((2, 2, 1, 8), dtype=np.float32)
    out = sdpa.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=[0, 4],
                                      is_causal=np.bool_(True))
    np.testing.assert_array_equal(k_buffer[0, :, 0, 2:10], k[0, :, 0])
    np.testing.assert_array_equal(v_buffer[1, 4], v[1, :, 0])
    assert not k_buffer[..., :2].any() and not k_buffer[..., 10:].any()
    np.testing.assert_array_equal(out[0], np.repeat(v[0], 2, axis=0))
    paged = np.zeros((3, 2, 4, 8), np.float32)
    out = sdpa.attention_with_kvcache(q, paged, paged.copy(), k, v,
                                      cache_seqlens=np.array([0, 0], np.int64),
                                      block_table=np.array([[2], [0]], np.int64))
    np.testing.assert_array_equal(paged[2, :, 0], k[0, :, 0])
    np.testing.assert_array_equal(paged[0, :, 0], k[1, :, 0])


# ---- torch -------------------------------------------------------------------------------------

def test_torch_tensors_are_written_in_place(rng):
    torch = pytest.importorskip("torch")
    import sdpa.torch  # noqa: F401 (needs torch)

    c = Case("torch paged int8", lens=[7, 2], q_len=2, block_size=4, max_len=12, shuffle=True,
             dtype="int8")
    cache = Cache(rng, c)
    tensors = [torch.from_numpy(a.copy()) for a in cache.arrays()]
    q = torch.from_numpy(rng.standard_normal((2, 4, 2, 16), dtype=np.float32))
    k = torch.from_numpy(rng.standard_normal((2, 2, 2, 16), dtype=np.float32))
    v = torch.from_numpy(rng.standard_normal((2, 2, 2, 16), dtype=np.float32))
    lens = torch.tensor(c.lens, dtype=torch.int32)
    table = torch.from_numpy(cache.block_table)
    with torch.inference_mode():
        out, lse = sdpa.torch.attention_with_kvcache(
            q, tensors[0], tensors[1], k, v, cache_seqlens=lens, block_table=table,
            k_scale=tensors[2], v_scale=tensors[3], return_lse=True, window=(3, None))
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    ref_out, ref_lse = sdpa.attention_with_kvcache(
        q.numpy(), *cache.arrays()[:2], k.numpy(), v.numpy(), cache_seqlens=c.lens,
        block_table=cache.block_table, k_scale=cache.k_scale, v_scale=cache.v_scale,
        return_lse=True, window=(3, None))
    np.testing.assert_array_equal(out.numpy(), ref_out)
    np.testing.assert_array_equal(lse.numpy(), ref_lse)
    for tensor, array in zip(tensors, cache.arrays()):  # the same append happened in both
        np.testing.assert_array_equal(tensor.numpy(), array)


def test_torch_decode_matches_torch_sdpa(rng):
    torch = pytest.importorskip("torch")
    import sdpa.torch  # noqa: F401

    k_cache = torch.zeros(2, 2, 32, 16)
    v_cache = torch.zeros(2, 2, 32, 16)
    prefix_k, prefix_v = torch.randn(2, 2, 20, 16), torch.randn(2, 2, 20, 16)
    k_cache[:, :, :20], v_cache[:, :, :20] = prefix_k, prefix_v
    q, k, v = torch.randn(2, 8, 1, 16), torch.randn(2, 2, 1, 16), torch.randn(2, 2, 1, 16)
    with torch.no_grad():
        out = sdpa.torch.attention_with_kvcache(q, k_cache, v_cache, k, v,
                                                cache_seqlens=torch.tensor([20, 20],
                                                                           dtype=torch.int32))
    keys, values = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
    expected = torch.nn.functional.scaled_dot_product_attention(q, keys, values,
                                                                enable_gqa=True)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    assert torch.equal(k_cache[:, :, 20], k[:, :, 0])


def test_torch_16_bit_queries_and_cache(rng):
    """bfloat16 queries and new tokens into a float16 cache tensor: the result is a bfloat16
    tensor equal to the numpy call's, and the cache tensor holds the appended tokens."""
    torch = pytest.importorskip("torch")
    import sdpa.torch  # noqa: F401

    k_cache, v_cache = torch.zeros(2, 2, 16, 8, dtype=torch.float16), torch.zeros(
        2, 2, 16, 8, dtype=torch.float16)
    q, k, v = (torch.from_numpy(rng.standard_normal(shape)).to(torch.bfloat16)
               for shape in ((2, 4, 2, 8), (2, 2, 2, 8), (2, 2, 2, 8)))
    with torch.inference_mode():
        out = sdpa.torch.attention_with_kvcache(q, k_cache, v_cache, k, v,
                                                cache_seqlens=[3, 0])
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 2, 8)
    assert torch.equal(k_cache[0, :, 3:5], k[0].to(torch.float16))  # both round to nearest
    assert not k_cache[0, :, :3].any() and not k_cache[0, :, 5:].any()
    # The same call on copies through numpy gives the same bits.
    k2, v2 = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    again = sdpa.torch.attention_with_kvcache(q, k2, v2, k, v, cache_seqlens=[3, 0])
    assert torch.equal(out.view(torch.int16), again.view(torch.int16))


def test_torch_errors(rng):
    torch = pytest.importorskip("torch")
    import sdpa.torch  # noqa: F401

    cache = torch.zeros(1, 1, 4, 8)
    q = torch.zeros(1, 1, 1, 8)
    with pytest.raises(ValueError, match=r"sdpa: k_cache requires grad but "):
        sdpa.torch.attention_with_kvcache(q, torch.zeros(1, 1, 4, 8, requires_grad=True), cache,
                                          cache_seqlens=[1])
    with pytest.raises(ValueError, match=r"sdpa: q requires grad but .* torch.no_grad"):
        sdpa.torch.attention_with_kvcache(q.requires_grad_(), cache, cache.clone(),
                                          cache_seqlens=[1])
    with pytest.raises(TypeError, match=r"sdpa: v_cache is a ndarray but must be a "
                                        r"torch.Tensor"):
        sdpa.torch.attention_with_kvcache(torch.zeros(1, 1, 1, 8), cache, np.zeros((1, 1, 4, 8)),
                                          cache_seqlens=[1])
    with pytest.raises(ValueError, match=r"sdpa: cache_seqlens\[0\] is 4 and 1 token\(s\)"):
        sdpa.torch.attention_with_kvcache(torch.zeros(1, 1, 1, 8), cache, cache.clone(),
                                          torch.ones(1, 1, 1, 8), torch.ones(1, 1, 1, 8),
                                          cache_seqlens=torch.tensor([4], dtype=torch.int32))
    assert not cache.any()


# ---- Errors: each names the argument, and nothing is written ----------------------------------

def _good():
    """A valid paged int8 call, as a dict of arguments, that each bad call changes one thing of."""
    rng = np.random.default_rng(5)
    c = Case("errors", lens=[3, 5], q_len=2, block_size=4, max_len=8, dtype="int8")
    cache = Cache(rng, c)
    return dict(q=rng.standard_normal((2, 4, 2, 16), dtype=np.float32),
                k_cache=cache.k_cache, v_cache=cache.v_cache,
                k=rng.standard_normal((2, 2, 2, 16), dtype=np.float32),
                v=rng.standard_normal((2, 2, 2, 16), dtype=np.float32),
                cache_seqlens=np.array(c.lens, np.int32), block_table=cache.block_table,
                k_scale=cache.k_scale, v_scale=cache.v_scale)


def _contiguous(args, max_len=8):
    """args with a contiguous float32 cache of max_len slots instead."""
    args = dict(args, block_table=None, k_scale=None, v_scale=None)
    args["k_cache"] = np.zeros((2, 2, max_len, 16), np.float32)
    args["v_cache"] = np.zeros((2, 2, max_len, 16), np.float32)
    return args


def _bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


BAD_CALLS: List[Tuple[str, object, type, str]] = [
    # (name, change: dict of arguments or a function of them, exception, message regex)
    ("q rank", dict(q=np.zeros((4, 2, 16), np.float32)), ValueError,
     r"q has rank 3 but must have rank 4"),
    ("q float64", lambda a: dict(a, q=a["q"].astype(np.float64)), TypeError,
     r"q.dtype is float64 but must be float32, bfloat16 or float16"),
    ("q ints", lambda a: dict(a, q=a["q"].astype(np.int64)), TypeError,
     r"q.dtype is int64 but must be float32"),
    ("q head_dim", dict(q=np.zeros((2, 4, 2, 8), np.float32)), ValueError,
     r"k_cache.shape\[3\] \(head_dim\) is 16 but q.shape\[3\] is 8"),
    ("q heads", dict(q=np.zeros((2, 3, 2, 16), np.float32)), ValueError,
     r"q.shape\[1\] \(heads\) is 3, which is not a multiple of k_cache.shape\[1\] \(kv_heads\) 2"),
    ("k shape", lambda a: dict(a, k=a["k"][:, :, :1]), ValueError,
     r"k.shape is \[2, 2, 1, 16\] but must be \[2, 2, 2, 16\]"),
    ("v without k", dict(k=None), ValueError, r"v is given but k is not"),
    ("k ints", lambda a: dict(a, k=a["k"].astype(np.int32)), TypeError,
     r"k.dtype is int32 but must be float32"),
    ("k_cache a list", lambda a: dict(a, k_cache=a["k_cache"].tolist()), TypeError,
     r"k_cache is a list but must be an array .* never copied"),
    ("k_cache read-only", lambda a: dict(a, k_cache=_readonly(a["k_cache"])), ValueError,
     r"k_cache is read-only but must be writable"),
    ("v_cache broadcast", lambda a: dict(a, v_cache=np.lib.stride_tricks.as_strided(
        a["v_cache"], strides=(0,) + a["v_cache"].strides[1:])), ValueError,
     r"v_cache has stride 0 in dimension 0 \(a broadcast view\)"),
    ("k_cache byte order", lambda a: dict(_contiguous(a), k_cache=np.zeros(
        (2, 2, 8, 16), ">f4")), ValueError, r"k_cache has dtype >f4 \(non-native byte order\)"),
    ("k_cache misaligned", lambda a: dict(_contiguous(a), k_cache=np.frombuffer(
        bytearray(2 * 2 * 8 * 16 * 4 + 1), np.float32, 2 * 2 * 8 * 16, 1).reshape(2, 2, 8, 16)),
     ValueError, r"k_cache has strides .* but must be aligned"),
    ("k_cache float64", lambda a: dict(_contiguous(a), k_cache=np.zeros((2, 2, 8, 16)),
                                       v_cache=np.zeros((2, 2, 8, 16))), TypeError,
     r"k_cache.dtype is float64 but must be float32, bfloat16, float16 or int8"),
    ("k_cache int16", lambda a: dict(a, k_cache=a["k_cache"].astype(np.int16)), TypeError,
     r"k_cache.dtype is int16 but must be float32, bfloat16, float16 or int8"),
    ("k_cache bfloat16", lambda a: dict(_contiguous(a), k_cache=np.zeros(
        (2, 2, 8, 8), np.uint32).view(_bfloat16())), TypeError,
     r"k_cache.dtype is bfloat16, which the Python layer cannot write in place yet"),
    ("v_cache dtype differs", lambda a: dict(_contiguous(a), v_cache=np.zeros((2, 2, 8, 16),
                                                                           np.int8)), TypeError,
     r"v_cache.dtype is int8 but k_cache.dtype is float32"),
    ("v_cache shape", lambda a: dict(a, v_cache=a["v_cache"][:, :1]), ValueError,
     r"v_cache.shape\[1\] is 1 but k_cache.shape\[1\] is 2"),
    ("v_cache is k_cache", lambda a: dict(a, v_cache=a["k_cache"]), ValueError,
     r"v_cache overlaps k_cache in memory"),
    ("contiguous batch", lambda a: dict(_contiguous(a), k_cache=np.zeros((3, 2, 8, 16),
                                                                         np.float32),
                                        v_cache=np.zeros((3, 2, 8, 16), np.float32)),
     ValueError, r"k_cache.shape\[0\] is 3 but q.shape\[0\] \(batch\) is 2"),
    ("past max_len", lambda a: _contiguous(a, max_len=6), ValueError,
     r"cache_seqlens\[1\] is 5 and 2 token\(s\) are appended, but sequence 1 has room for 6 "
     r"\(k_cache.shape\[2\], max_len\)"),
    ("past the blocks", dict(cache_seqlens=np.array([3, 7], np.int32)), ValueError,
     r"cache_seqlens\[1\] is 7 and 2 token\(s\) are appended, but sequence 1 has room for 8 "
     r"\(block_table.shape\[1\] · block_size\)"),
    ("negative length", dict(cache_seqlens=np.array([3, -1], np.int32)), ValueError,
     r"cache_seqlens\[1\] is -1 but must be >= 0"),
    ("length beyond int32", dict(cache_seqlens=[3, 2**31]), ValueError,
     r"cache_seqlens\[1\] is 2147483648 but must fit in int32"),
    ("float lengths", dict(cache_seqlens=[3.0, 5.0]), TypeError,
     r"cache_seqlens.dtype is float64 but must be an integer dtype"),
    ("lengths shape", dict(cache_seqlens=[3, 5, 1]), ValueError,
     r"cache_seqlens.shape\[0\] is 3 but q.shape\[0\] \(batch\) is 2"),
    ("lengths rank", dict(cache_seqlens=[[3, 5]]), ValueError,
     r"cache_seqlens has rank 2 but must have rank 1"),
    ("block id out of range", lambda a: dict(a, block_table=np.array([[0, 1], [2, 9]])),
     ValueError, r"block_table\[1, 1\] is 9 but must be in \[0, 5\) \(k_cache.shape\[0\] "
                 r"blocks\); sequence 1 uses its first 2 block\(s\)"),
    ("negative block id", lambda a: dict(a, block_table=np.array([[0, -1], [2, 3]])),
     ValueError, r"block_table\[0, 1\] is -1 but must be in \[0, 5\)"),
    ("shared block appended to", lambda a: dict(a, block_table=np.array([[0, 3], [2, 3]])),
     ValueError, r"block_table\[0, 1\] = 3 is appended to by sequence 0 but also mapped by "
                 r"sequence 1 \(block_table\[1, 1\]\)"),
    ("block table rows", lambda a: dict(a, block_table=a["block_table"][:1]), ValueError,
     r"block_table.shape\[0\] is 1 but q.shape\[0\] \(batch\) is 2"),
    ("float block table", lambda a: dict(a, block_table=a["block_table"].astype(np.float32)),
     TypeError, r"block_table.dtype is float32 but must be an integer dtype"),
    ("int8 without scales", dict(k_scale=None), ValueError,
     r"k_scale is required for an int8 cache"),
    ("scale shape", lambda a: dict(a, v_scale=a["v_scale"][:, :, :3].copy()), ValueError,
     r"v_scale.shape is \[5, 2, 3\] but must be \[5, 2, 4\] \(the cache's shape without "
     r"head_dim\)"),
    ("scale dtype", lambda a: dict(a, k_scale=a["k_scale"].astype(np.float64)), TypeError,
     r"k_scale.dtype is float64 but must be float32"),
    ("scale int8", lambda a: dict(a, k_scale=a["k_scale"].astype(np.int8)), TypeError,
     r"k_scale.dtype is int8 but must be float32"),
    ("scale read-only", lambda a: dict(a, v_scale=_readonly(a["v_scale"])), ValueError,
     r"v_scale is read-only but must be writable"),
    ("scales of a float cache", lambda a: dict(_contiguous(a), k_scale=np.zeros((2, 2, 8),
                                                                                np.float32)),
     ValueError, r"k_scale is given but the cache is float32"),
    ("sinks count", dict(sinks=[0.0, 0.0]), ValueError,
     r"sinks has 2 values but must have one per query head \(4\)"),
    ("window", dict(window=(-2, 0)), ValueError, r"window\[0\] is -2 but must be >= 0"),
    ("is_causal", dict(is_causal=1), TypeError, r"is_causal is 1 but must be a bool"),
    ("return_lse", dict(return_lse="yes"), TypeError, r"return_lse is 'yes' but must be a bool"),
    ("scale", dict(scale="0.5"), TypeError, r"scale is '0.5' but must be a real number"),
]


@pytest.mark.parametrize("name, change, error, message", BAD_CALLS,
                         ids=[b[0] for b in BAD_CALLS])
def test_bad_calls_raise_and_write_nothing(name, change, error, message):
    args = _good()
    args = change(args) if callable(change) else dict(args, **change)
    written = [a for key in ("k_cache", "v_cache", "k_scale", "v_scale")
               if isinstance(a := args.get(key), np.ndarray)]
    before = [a.copy() for a in written]
    q, k_cache, v_cache = args.pop("q"), args.pop("k_cache"), args.pop("v_cache")
    k, v = args.pop("k", None), args.pop("v", None)
    with pytest.raises(error, match="^sdpa: " + message):
        sdpa.attention_with_kvcache(q, k_cache, v_cache, k, v, **args)
    for now, was in zip(written, before):
        np.testing.assert_array_equal(now, was)


def test_the_good_call_of_the_error_cases_is_good():
    """The call every bad call changes one thing of runs, and appends: so each error above is
    that one change's."""
    args = _good()
    before = args["k_cache"].copy()
    q, k_cache, v_cache = args.pop("q"), args.pop("k_cache"), args.pop("v_cache")
    sdpa.attention_with_kvcache(q, k_cache, v_cache, args.pop("k"), args.pop("v"), **args)
    assert not np.array_equal(k_cache, before)


def test_keyword_only_and_required_lengths():
    x = np.zeros((1, 1, 1, 4), np.float32)
    cache = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(TypeError, match="cache_seqlens"):
        sdpa.attention_with_kvcache(x, cache, cache.copy())
    with pytest.raises(TypeError):
        sdpa.attention_with_kvcache(x, cache, cache.copy(), None, None, [0])


def test_gil_is_released_while_computing(rng):
    """Another Python thread keeps running while a chunked-prefill call computes (with the GIL
    held it could not tick at all until the call returned). Counts ticks, times nothing."""
    import threading
    import time

    q = rng.standard_normal((1, 8, 32, 64), dtype=np.float32)
    k_cache = rng.standard_normal((1, 2, 8192, 64), dtype=np.float32)
    v_cache = rng.standard_normal((1, 2, 8192, 64), dtype=np.float32)
    ticks, running, stop = [], threading.Event(), threading.Event()

    def count():
        running.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    counter = threading.Thread(target=count)
    counter.start()
    running.wait()
    began = time.perf_counter()
    for _ in range(3):
        sdpa.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=[8192])
    ended = time.perf_counter()
    stop.set()
    counter.join()
    assert len([t for t in ticks if began < t < ended]) >= 5
