#!/usr/bin/env python3
"""Decode over a KV cache from Python: sdpa.attention_with_kvcache against PyTorch SDPA on the
same contiguous cache, and against numpy gather + attention for a paged one.

    python bench/kv_cache_bench.py [--batch 1,8] [--context 4096,16384] [--threads 2]
                                   [--samples 7] [--update docs/benchmarks.md]

One decode (or speculative, Lq = 4) step of B sequences, Hq = 32 query heads over Hkv = 8 KV
heads of D = 128, every sequence holding `context` tokens, no append (the step's cost is the
read of the cache). Rows:

  sdpa      sdpa.attention_with_kvcache on the cache (float32 or int8 with scales; contiguous
            or paged with 16-token blocks in a shuffled block table);
  torch     torch.nn.functional.scaled_dot_product_attention(q, k_cache, v_cache,
            enable_gqa=True) on the same contiguous float32 cache as tensors (bottom-right causal
            for Lq = 4 given as a bool mask, which is what a caller must do);
  numpy     paged only: gather each sequence's blocks (k_cache[block_table[b]]) and do float32
            softmax attention with matmuls, what a caller without a paged kernel does.

max abs diff: sdpa's out against the peer's on that shape (float32 both).
GB/s counts the cache bytes a step must read once: K and V rows of every sequence (and an int8
cache's float32 scales). Implementations take turns within each shape and each figure is the
median of --samples samples, a sample being the mean of back-to-back calls for >= 0.2 s. Compare
with the machine's read bandwidth (the Machine section of docs/benchmarks.md, measured by
build/bench/forward_bench). The C++ grid of the issue is bench/decode_bench.cc.

--update FILE replaces the text between <!-- kvcache:begin --> and <!-- kvcache:end --> in FILE
(inside docs/benchmarks.md's hand-written notes, which bench/compare.py preserves).
"""

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

import sdpa

BEGIN, END = "<!-- kvcache:begin -->", "<!-- kvcache:end -->"
HEADS, KV_HEADS, DIM, BLOCK = 32, 8, 128, 16


def quantize(x):
    """int8 rows and float32 scales as the library appends them (scale = max|x| / 127)."""
    step = (np.abs(x).max(axis=-1) / 127.0).astype(np.float32)
    q = np.rint(x / np.where(step > 0, step, 1)[..., None])
    return np.clip(q, -127, 127).astype(np.int8), step


class Shape:
    """The arrays of one (batch, context, q_len, dtype, layout) case."""

    def __init__(self, rng, batch, context, q_len, dtype, paged):
        self.batch, self.context, self.q_len, self.dtype, self.paged = (batch, context, q_len,
                                                                        dtype, paged)
        self.q = rng.standard_normal((batch, HEADS, q_len, DIM), dtype=np.float32)
        shape = (batch, KV_HEADS, context, DIM)
        k = rng.standard_normal(shape, dtype=np.float32)
        v = rng.standard_normal(shape, dtype=np.float32)
        self.lens = np.full(batch, context, np.int32)
        self.scales = {}
        if dtype == "int8":
            k, ks = quantize(k)
            v, vs = quantize(v)
            self.scales = dict(k_scale=ks, v_scale=vs)
        self.table = None
        if paged:
            per_seq = context // BLOCK
            ids = rng.permutation(batch * per_seq).astype(np.int32)
            self.table = ids.reshape(batch, per_seq)
            k, v = self._paged(k), self._paged(v)
            self.scales = {n: self._paged(s) for n, s in self.scales.items()}
        self.k_cache, self.v_cache = k, v

    def _paged(self, logical):
        """[B, Hkv, context, ...] laid out as blocks [B * context / 16, Hkv, 16, ...]."""
        b, h, n = logical.shape[:3]
        blocks = logical.reshape((b, h, n // BLOCK, BLOCK) + logical.shape[3:])
        blocks = np.moveaxis(blocks, 2, 1).reshape((b * n // BLOCK, h, BLOCK) +
                                                   logical.shape[3:])
        out = np.empty_like(blocks)
        out[self.table.reshape(-1)] = blocks
        return out

    def cache_bytes(self):
        rows = self.batch * KV_HEADS * self.context
        per_row = 2 * DIM * (1 if self.dtype == "int8" else 4)
        return rows * (per_row + (8 if self.dtype == "int8" else 0))

    def sdpa_call(self):
        return lambda: sdpa.attention_with_kvcache(self.q, self.k_cache, self.v_cache,
                                                   cache_seqlens=self.lens,
                                                   block_table=self.table, **self.scales)

    def torch_call(self, torch):
        tq, tk, tv = (torch.from_numpy(a) for a in (self.q, self.k_cache, self.v_cache))
        mask = None
        if self.q_len > 1:  # bottom-right causal
            mask = torch.ones(self.q_len, self.context, dtype=torch.bool).tril(
                self.context - self.q_len)
        F = torch.nn.functional
        return lambda: F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask,
                                                      enable_gqa=True)

    def numpy_call(self):
        group = HEADS // KV_HEADS
        visible = np.tril(np.ones((self.q_len, self.context), bool), self.context - self.q_len)
        bias = np.where(visible, 0, -np.inf).astype(np.float32)
        scale = np.float32(1 / np.sqrt(DIM))

        def call():
            out = np.empty((self.batch, HEADS, self.q_len, DIM), np.float32)
            for b in range(self.batch):
                blocks = self.table[b]
                k = np.moveaxis(self.k_cache[blocks], 1, 0).reshape(KV_HEADS, -1, DIM)
                v = np.moveaxis(self.v_cache[blocks], 1, 0).reshape(KV_HEADS, -1, DIM)
                q = self.q[b].reshape(KV_HEADS, group * self.q_len, DIM)
                s = (q @ k.transpose(0, 2, 1)).reshape(KV_HEADS, group, self.q_len, -1)
                s = s * scale + bias
                p = np.exp(s - s.max(axis=-1, keepdims=True))
                p /= p.sum(axis=-1, keepdims=True)
                out[b] = (p.reshape(KV_HEADS, group * self.q_len, -1) @ v).reshape(
                    HEADS, self.q_len, DIM)
            return out

        return call


def sample(call, min_seconds=0.2):
    """Mean seconds of back-to-back calls for at least min_seconds."""
    call()
    count, began = 0, time.perf_counter()
    while True:
        call()
        count += 1
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            return elapsed / count


def measure(calls, samples):
    """Median seconds of each named call, taking turns in a rotating order."""
    names = list(calls)
    times = {name: [] for name in names}
    for s in range(samples):
        for name in names[s % len(names):] + names[:s % len(names)]:
            times[name].append(sample(calls[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def machine():
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        model = (f"{fields['Model name'].strip()} (family {fields['CPU family'].strip()}, "
                 f"model {fields['Model'].strip()})")
        flags = fields.get("Flags", "").split()
        model += "; " + ", ".join(f for f in ("avx512f", "avx512_bf16", "avx2", "fma")
                                  if f in flags)
    except (OSError, KeyError):
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--context", default="4096,16384")
    parser.add_argument("--q-len", default="1,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--update", metavar="FILE")
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    sdpa.set_num_threads(args.threads)
    try:  # numpy's BLAS gets the same threads
        from threadpoolctl import threadpool_limits
        blas_limit = threadpool_limits(limits=args.threads)  # noqa: F841 (stays in effect)
    except ImportError:
        blas_limit = None
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]

    rows = []
    for batch in map(int, args.batch.split(",")):
        for context in map(int, args.context.split(",")):
            for q_len in map(int, args.q_len.split(",")):
                for dtype, paged in (("float32", False), ("int8", False), ("float32", True),
                                     ("int8", True)):
                    shape = Shape(rng, batch, context, q_len, dtype, paged)
                    calls = {"sdpa": shape.sdpa_call()}
                    if dtype == "float32" and not paged and torch is not None:
                        calls["torch"] = shape.torch_call(torch)
                    if dtype == "float32" and paged:
                        calls["numpy"] = shape.numpy_call()
                    seconds = measure(calls, args.samples)
                    ours = calls["sdpa"]()
                    diff = max((float(np.abs(np.asarray(call()) - ours).max())
                                for name, call in calls.items() if name != "sdpa"), default=None)
                    rows.append((shape, seconds, diff))
                    print(f"B={batch} ctx={context} Lq={q_len} {dtype} "
                          f"{'paged' if paged else 'contiguous'}: " + ", ".join(
                              f"{n} {s * 1e3:.2f} ms" for n, s in seconds.items()),
                          file=sys.stderr, flush=True)
                    del shape

    lines = [
        f"Measured by `bench/kv_cache_bench.py` on {datetime.date.today()}: Hq = {HEADS}, "
        f"Hkv = {KV_HEADS}, D = {DIM}, every sequence at the full context, no append; paged = "
        f"blocks of {BLOCK} in a shuffled table. {args.threads} threads for sdpa, torch"
        + (" and numpy's BLAS (threadpoolctl). " if blas_limit is not None else
           " (numpy's BLAS: its default). ") +
        f"CPU: {machine()}. sdpa {sdpa.__version__}, numpy {np.__version__}"
        + (f", torch {torch.__version__}" if torch is not None else "") +
        f". Load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. Medians of "
        f"{args.samples} samples taken in turns.",
        "",
        "| B | context | Lq | cache | layout | sdpa ms | sdpa GB/s | torch ms | numpy gather ms "
        "| torch / sdpa | numpy / sdpa | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, seconds, diff in rows:
        s = seconds["sdpa"]
        other = {n: seconds.get(n) for n in ("torch", "numpy")}
        lines.append(
            f"| {shape.batch} | {shape.context} | {shape.q_len} | {shape.dtype} | "
            f"{'paged 16' if shape.paged else 'contiguous'} | {s * 1e3:.2f} | "
            f"{shape.cache_bytes() / s / 1e9:.1f} | "
            + " | ".join("–" if t is None else f"{t * 1e3:.2f}" for t in other.values()) + " | "
            + " | ".join("–" if t is None else f"{t / s:.2f}×" for t in other.values()) + " | "
            + ("–" if diff is None else f"{diff:.1e}") + " |")
    text = "\n".join(lines)
    if args.update:
        with open(args.update) as f:
            doc = f.read()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{args.update} has no {BEGIN} ... {END} block to replace")
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                     lambda _: f"{BEGIN}\n{text}\n{END}", doc, flags=re.S)
        with open(args.update, "w") as f:
            f.write(doc)
    else:
        print(text)


if __name__ == "__main__":
    main()
