#!/usr/bin/env python3
"""Attention forward side by side: the sdpa engine, its reference, unfused numpy and PyTorch SDPA.

Runs every implementation in this one process with the same thread count, interleaved per shape
(sdpa, torch, numpy, reference, then again in a rotated order, ...) so that noise from a shared
machine hits all of them alike, and reports the median of the samples. Writes

    <out>/benchmarks.md    machine, measured limits, targets of issue 3, tables with ratios
    <out>/benchmarks.png   throughput vs L, one line per implementation (needs matplotlib)

The machine's limits (float32 FMA peak, read bandwidth over 512 MiB) come from the Google
Benchmark binary bench/forward_bench (found in build*/bench/ or given with --bench-binary), so the
C++ suite and this report divide by the same numbers; without it the peak comes from `sdpa info`
and the bandwidth from a threaded numpy sum.

The numbers in docs/ are made on a quiet machine (load average well below 1) with

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py --threads 2

(those two variables, set on some machines for old OpenBLAS builds, slow down a current numpy;
unset them for this command only; the full run takes about 9 minutes). `--quick` runs a tiny
grid in a few seconds (smoke test; with forward_bench, its variant rows add about a minute).

The Variants section (issue 7: sliding-window cost against the window, packed varlen against
padding, each variant's overhead) comes from forward_bench's rows Window/, Varlen/ and Variant/,
run in one process with interleaved repetitions. `--only variants` runs just those rows (a few
minutes) and rewrites just that section of <out>/benchmarks.md; a run that cannot measure them
keeps the section already there. Text between the notes markers of an existing
<out>/benchmarks.md is kept across runs; `--json FILE` saves the raw results and
`--from-json FILE` remakes the report and plot from them without measuring.

The 16-bit section (issue 13: sdpa bfloat16/float16 next to PyTorch's own bfloat16/float16
SDPA and both in float32, B=1 H=8, L in {1024, 4096}, D in {64, 128}, full and causal, interleaved
in one process) comes from `--only half` (a few minutes; needs torch and ml_dtypes), which
rewrites just that section; a full run keeps the one already there.
"""

import argparse
import datetime
import glob
import inspect
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTES_BEGIN = "<!-- notes:begin -->"
NOTES_END = "<!-- notes:end -->"
VARIANTS_BEGIN = "<!-- variants:begin -->"  # the Variants section, which --only variants rewrites
VARIANTS_END = "<!-- variants:end -->"
HALF_BEGIN = "<!-- half:begin -->"  # the 16-bit section, which --only half rewrites
HALF_END = "<!-- half:end -->"
NUMPY_MAX_SCORE_BYTES = 4 << 30  # the unfused path materialises B·H·Lq·Lkv float32 scores
REFERENCE_MAX_FLOPS = 3e8  # the reference runs at ~1 GFLOP/s: keep a call under ~0.3 s

IMPLS = ("sdpa", "torch", "numpy", "reference")
TARGET_PEAK_FRACTION = {64: 0.65, 128: 0.75}  # issue 3, L >= 1024
NOISY_SPREAD = 0.15  # samples further apart than this (over the median) mark a row as noisy
NOISY_MARK = " (†)"
IDLE_SECONDS = {"numpy": 0.15}  # pause after an implementation's sample (see measure_shape)
COLORS = {"sdpa": "tab:blue", "torch": "tab:red", "numpy": "tab:green", "reference": "tab:gray"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for every implementation (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few samples: a smoke test, not a measurement")
    parser.add_argument("--out", default=os.path.join(REPO, "docs"),
                        help="folder for benchmarks.md and benchmarks.png (default docs/)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="samples per implementation and shape (default 7, quick 2)")
    parser.add_argument("--sample-seconds", type=float, default=None,
                        help="each sample repeats the call for at least this long "
                             "(default 0.25, quick 0.01)")
    parser.add_argument("--bench-binary", default=None,
                        help="path to forward_bench (default: the newest build*/bench/"
                             "forward_bench); 'none' to use the fallbacks")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--from-json", default=None,
                        help="measure nothing: rewrite the report and plot from a file that "
                             "--json wrote (to change the notes or the layout)")
    parser.add_argument("--only", choices=("variants", "half"), default=None,
                        help="variants: run only forward_bench's variant rows (issue 7: window, "
                             "varlen, variant overheads, a few minutes) and rewrite only the "
                             "Variants section of <out>/benchmarks.md, keeping the rest; half: "
                             "the same for the 16-bit section (issue 13: sdpa and torch in "
                             "float32, bfloat16 and float16)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.sample_seconds is None:
        args.sample_seconds = 0.01 if args.quick else 0.25
    return args


# -------------------------------------------------------------------------------------------
# Shapes


class Shape:
    """One attention call: query (B, H, Lq, D), key (B, Hkv, Lkv, D), value (B, Hkv, Lkv, Dv)."""

    def __init__(self, kind, heads, q_len, kv_len, head_dim, causal=False, kv_heads=None,
                 batch=1):
        self.kind = kind  # "prefill" (the L × L grid) or "decode" (Lq = 1)
        self.batch, self.heads = batch, heads
        self.kv_heads = heads if kv_heads is None else kv_heads
        self.q_len, self.kv_len = q_len, kv_len
        self.head_dim = self.v_dim = head_dim
        self.causal = causal  # top-left, as PyTorch's is_causal

    def visible_pairs(self):
        """(query, key) pairs that take part; for causal exactly those with j <= i."""
        if not self.causal:
            return self.q_len * self.kv_len
        lq, lkv = self.q_len, self.kv_len
        if lq <= lkv:
            return lq * (lq + 1) // 2
        return lkv * (lkv + 1) // 2 + (lq - lkv) * lkv

    def flops(self):
        return 2 * self.batch * self.heads * self.visible_pairs() * (self.head_dim + self.v_dim)

    def kv_bytes(self):
        return 4 * self.batch * self.kv_heads * self.kv_len * (self.head_dim + self.v_dim)

    def score_bytes(self):
        return 4 * self.batch * self.heads * self.q_len * self.kv_len

    def label(self):
        if self.kind == "decode":
            return f"B={self.batch} H={self.heads} D={self.head_dim} Lq=1 Lkv={self.kv_len}"
        causal = "causal" if self.causal else "full"
        return f"B={self.batch} H={self.heads} D={self.head_dim} L={self.q_len} {causal}"


def grid(quick):
    if quick:
        dims, lengths, heads, decode = (32,), (64, 128), 2, dict(heads=4, dim=32, lens=(512,))
    else:
        dims, lengths, heads = (64, 128), (256, 1024, 4096, 16384), 8
        decode = dict(heads=32, dim=128, lens=(4096, 32768))
    shapes = [Shape("prefill", heads, length, length, dim, causal)
              for dim in dims for causal in (False, True) for length in lengths]
    shapes += [Shape("decode", decode["heads"], 1, length, decode["dim"])
               for length in decode["lens"]]
    return shapes


# -------------------------------------------------------------------------------------------
# The machine


def cpu_description():
    info = {"model": platform.processor() or platform.machine(), "flags": set()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and info["model"] in ("", platform.machine(), "x86_64"):
                    info["model"] = value.strip()
                elif key == "flags" and not info["flags"]:
                    info["flags"] = set(value.split())
    except OSError:
        pass
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level} {size}")
    info["caches"] = caches
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["memory_bytes"] = memory
    info["cpus"] = os.cpu_count()
    return info


def find_bench_binary(requested):
    if requested == "none":
        return None
    if requested:
        return requested if os.access(requested, os.X_OK) else None
    candidates = [path for path in glob.glob(os.path.join(REPO, "build*", "bench", "forward_bench"))
                  if os.access(path, os.X_OK)]
    return max(candidates, key=os.path.getmtime) if candidates else None


def limits_from_bench(binary, threads, quick):
    """FMA peak (GFLOP/s) and read bandwidth (GB/s) for 1 and `threads` threads, from the rows
    Machine/FmaPeak and Machine/ReadBandwidth of forward_bench."""
    env = dict(os.environ, SDPA_NUM_THREADS=str(threads))
    command = [binary, "--benchmark_filter=^Machine/", "--benchmark_format=json",
               f"--benchmark_min_time={0.01 if quick else 0.3}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                            check=True)
    report = json.loads(result.stdout)
    inside = os.path.abspath(binary).startswith(REPO + os.sep)
    shown = os.path.relpath(binary, REPO) if inside else binary
    peak, bandwidth = {}, {}
    for row in report["benchmarks"]:
        match = re.match(r"Machine/(\w+)/threads:(\d+)", row["name"])
        if not match:
            continue
        count = int(match.group(2))
        if match.group(1) == "FmaPeak":
            # The better of the start-up and the row's own measurement: a neighbour can only
            # make a peak measurement lower.
            peak[count] = max(row["GFLOP/s"], row.get("startup_GFLOP/s", 0.0))
        elif match.group(1) == "ReadBandwidth":
            bandwidth[count] = max(row["GB/s"], row.get("best_pass_GB/s", 0.0))
    return {"peak_gflops": peak, "bandwidth_gbps": bandwidth,
            "source": f"`{shown}` (rows `Machine/FmaPeak`, `Machine/ReadBandwidth`)"}


def limits_fallback(threads, quick):
    """Without forward_bench: the peak from `sdpa info`, the bandwidth from numpy sums."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    peak = {}
    tool = shutil.which("sdpa")
    if tool:
        try:
            text = subprocess.run([tool, "info", "--threads", str(threads)], capture_output=True,
                                  text=True, timeout=120, check=True).stdout
            match = re.search(r"fma peak:\s*([\d.]+) GFLOP/s with (\d+) threads?"
                              r"(?: \(([\d.]+) with 1\))?", text)
            if match:
                peak[int(match.group(2))] = float(match.group(1))
                peak[1] = float(match.group(3) or match.group(1))
        except (subprocess.SubprocessError, OSError):
            pass
    buffer = np.ones((64 if quick else 512) << 18, dtype=np.float32)  # 64 or 512 MiB
    bandwidth = {}
    for count in sorted({1, threads}):
        parts = np.array_split(buffer, count)
        with ThreadPoolExecutor(count) as pool:  # numpy releases the GIL in the sums
            best = math.inf
            for _ in range(5):
                start = time.perf_counter()
                list(pool.map(np.add.reduce, parts))
                best = min(best, time.perf_counter() - start)
        bandwidth[count] = buffer.nbytes / best * 1e-9
    return {"peak_gflops": peak, "bandwidth_gbps": bandwidth,
            "source": "`sdpa info` (peak) and a threaded numpy sum (bandwidth; forward_bench "
                      "was not found, so this is a lower bound)"}


# -------------------------------------------------------------------------------------------
# The implementations. Each maker returns (callable, None) or (None, reason skipped).


def make_operands(shape, np):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((shape.batch, shape.heads, shape.q_len, shape.head_dim),
                            dtype=np.float32)
    k = rng.standard_normal((shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim),
                            dtype=np.float32)
    v = rng.standard_normal((shape.batch, shape.kv_heads, shape.kv_len, shape.v_dim),
                            dtype=np.float32)
    return q, k, v


def numpy_attention(q, k, v, bias, scale, np):
    """The straightforward unfused float32 path: S = Q Kᵀ·scale (+ causal bias), row max
    subtracted, exp, normalised, times V. Materialises the B·H·Lq·Lkv score matrix."""
    s = np.matmul(q, k.swapaxes(-1, -2))
    s *= scale
    if bias is not None:
        s += bias
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return np.matmul(s, v)


class Peers:
    """Imports and thread settings of the peers, done once."""

    def __init__(self, threads):
        import numpy as np
        import sdpa

        self.np, self.sdpa, self.threads = np, sdpa, threads
        sdpa.set_num_threads(threads)
        self.has_backend = "backend" in inspect.signature(sdpa.attention).parameters
        self.threadpool = None
        self.blas = []
        try:
            from threadpoolctl import threadpool_info, threadpool_limits

            self.threadpool = threadpool_limits(limits=threads)  # stays in effect
            self.blas = [{key: lib.get(key) for key in
                          ("internal_api", "version", "architecture", "num_threads", "filepath")}
                         for lib in threadpool_info() if lib.get("user_api") == "blas"]
        except ImportError:
            pass
        try:
            import torch

            torch.set_num_threads(threads)
            self.torch = torch
        except ImportError:
            self.torch = None

    def make(self, name, shape, q, k, v):
        np, sdpa = self.np, self.sdpa
        causal = "top_left" if shape.causal else None
        if name == "sdpa":
            return (lambda: sdpa.attention(q, k, v, causal=causal)), None
        if name == "sdpa_1t":  # the engine on one thread, for the decode scaling
            def one_thread():
                sdpa.set_num_threads(1)
                try:
                    return sdpa.attention(q, k, v, causal=causal)
                finally:
                    sdpa.set_num_threads(self.threads)
            return one_thread, None
        if name == "reference":
            if not self.has_backend:
                return None, "this sdpa build has no backend= keyword"
            if shape.flops() > REFERENCE_MAX_FLOPS:
                return None, f"over {REFERENCE_MAX_FLOPS:.0e} FLOPs (too slow)"
            return (lambda: sdpa.attention(q, k, v, causal=causal, backend="reference")), None
        if name == "numpy":
            if shape.score_bytes() > NUMPY_MAX_SCORE_BYTES:
                return None, (f"the score matrix would take "
                              f"{shape.score_bytes() / 2**30:.0f} GiB")
            bias = None
            if shape.causal:
                bias = np.triu(np.full((shape.q_len, shape.kv_len), -np.inf, np.float32), k=1)
            scale = 1.0 / math.sqrt(shape.head_dim)
            return (lambda: numpy_attention(q, k, v, bias, scale, np)), None
        if name == "torch":
            torch = self.torch
            if torch is None:
                return None, "torch is not installed"
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
            gqa = shape.kv_heads != shape.heads
            sdpa_fn = torch.nn.functional.scaled_dot_product_attention

            def run_torch():
                with torch.inference_mode():
                    return sdpa_fn(tq, tk, tv, is_causal=shape.causal, enable_gqa=gqa)
            return run_torch, None
        raise ValueError(name)


def to_numpy(result, np):
    if hasattr(result, "numpy"):  # a torch tensor, in float32 (bfloat16 has no numpy form)
        return result.float().numpy()
    return np.asarray(result)


def time_sample(function, calls):
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def measure_shape(peers, shape, args, log):
    """Median seconds per call of every implementation on `shape`, sampled interleaved."""
    np = peers.np
    q, k, v = make_operands(shape, np)
    names = list(IMPLS) + (["sdpa_1t"] if shape.kind == "decode" and args.threads > 1 else [])
    functions, results = {}, {}
    for name in names:
        function, skipped = peers.make(name, shape, q, k, v)
        if function is None:
            results[name] = {"skipped": skipped}
        else:
            functions[name] = function

    sample_interleaved(functions, results, args, np, first="sdpa")
    summary = "  ".join(f"{name} {results[name]['seconds'] * 1e3:.3g} ms" for name in functions)
    log(f"{shape.label():<40} {summary}")
    return results


def sample_interleaved(functions, results, args, np, first):
    """Fills results[name] for each of `functions` with the median seconds per call and the
    samples, taken interleaved in a rotating order; "max_abs_diff" is against the output of
    `first` (which must come first in `functions`)."""
    # Warm-up: one call each, which also sizes the samples and checks the outputs agree.
    ours = None
    calls = {}
    for name, function in functions.items():
        start = time.perf_counter()
        out = to_numpy(function(), np).astype(np.float64)
        warm = time.perf_counter() - start
        calls[name] = max(1, int(args.sample_seconds / max(warm, 1e-6)))
        results[name] = {"warmup_s": warm}
        if name == first:
            ours = out
        elif ours is not None:
            results[name]["max_abs_diff"] = float(np.max(np.abs(out - ours)))
        del out
        time.sleep(IDLE_SECONDS.get(name, 0.02))  # as between samples, below
    slowest = max((results[name]["warmup_s"] for name in functions), default=0)
    repeats = args.repeats if slowest < 2.0 else min(args.repeats, 3)

    order = list(functions)
    samples = {name: [] for name in order}
    for repeat in range(repeats):
        rotated = order[repeat % len(order):] + order[:repeat % len(order)]
        for name in rotated:
            samples[name].append(time_sample(functions[name], calls[name]))
            # Let this implementation's idle workers go to sleep before the next one starts:
            # OpenBLAS's spin for up to ~0.1 s after a call (measured: sdpa 15-20% slower when
            # it starts 20 ms after numpy's matmul, unaffected after 100 ms); libgomp's, shared
            # by sdpa and torch, spin far less.
            time.sleep(IDLE_SECONDS.get(name, 0.02))
    for name in order:
        results[name].update(seconds=statistics.median(samples[name]), samples=samples[name],
                             calls_per_sample=calls[name])


# -------------------------------------------------------------------------------------------
# 16-bit (issue 13): sdpa and torch in float32, bfloat16 and float16, side by side

HALF_DTYPES = ("float32", "bfloat16", "float16")
HALF_IMPLS = tuple(f"{who} {dtype}" for who in ("sdpa", "torch") for dtype in HALF_DTYPES)


def half_grid(quick):
    if quick:
        return [Shape("prefill", 2, 128, 128, 32, causal) for causal in (False, True)]
    return [Shape("prefill", 8, length, length, dim, causal)
            for dim in (64, 128) for length in (1024, 4096) for causal in (False, True)]


def half_functions(peers, shape):
    """The six calls on `shape`: sdpa (numpy arrays; bfloat16 as ml_dtypes.bfloat16) and
    torch's F.scaled_dot_product_attention, each on the same values rounded to each dtype."""
    import ml_dtypes

    np, torch, sdpa = peers.np, peers.torch, peers.sdpa
    operands = make_operands(shape, np)
    causal = "top_left" if shape.causal else None
    sdpa_fn = torch.nn.functional.scaled_dot_product_attention
    functions = {}
    for dtype in HALF_DTYPES:
        tensors = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in operands]
        if dtype == "bfloat16":
            arrays = [t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16) for t in tensors]
        else:
            arrays = [t.numpy() for t in tensors]
        functions[f"sdpa {dtype}"] = lambda a=arrays: sdpa.attention(*a, causal=causal)

        def run_torch(t=tensors):
            with torch.inference_mode():
                return sdpa_fn(*t, is_causal=shape.causal)
        functions[f"torch {dtype}"] = run_torch
    return {name: functions[name] for name in HALF_IMPLS}


def measure_half(peers, args, log):
    """The 16-bit section's measurements: {"rows": [{shape fields, results}], "plans": ...}."""
    if peers.torch is None:
        return {"skipped": "torch is not installed"}
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return {"skipped": "ml_dtypes is not installed (pip install ml_dtypes)"}
    rows = []
    for shape in half_grid(args.quick):
        results = {}
        sample_interleaved(half_functions(peers, shape), results, args, peers.np,
                           first="sdpa float32")
        summary = "  ".join(f"{name} {results[name]['seconds'] * 1e3:.3g} ms"
                            for name in HALF_IMPLS)
        log(f"{shape.label():<40} {summary}")
        rows.append({"shape": vars(shape), "results": results})
    return {"rows": rows, "plans": half_plans(peers)}


def half_plans(peers):
    """What the engine says it does with 16-bit inputs (its Explain 'why' for bfloat16, and
    float16), at the section's largest shape."""
    import ml_dtypes

    np = peers.np
    plans = {}
    for dtype in ("bfloat16", "float16"):
        x = np.zeros((1, 8, 4096, 64), dtype=ml_dtypes.bfloat16 if dtype == "bfloat16"
                     else np.float16)
        plans[dtype] = peers.sdpa.explain(x, x, x)
    return plans


def section_half(half, context):
    """## 16-bit: GFLOP/s of each implementation and dtype, and the ratios that matter."""
    lines = [HALF_BEGIN, "## 16-bit: bfloat16 and float16 (issue 13)", ""]
    if "rows" not in half:
        return lines + [f"Not measured: {half.get('skipped', 'no rows')}.", "", HALF_END]
    cpu = context["cpu"]
    flags = cpu["flags"]
    present = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512fp16",
                           "amx_bf16") if f in flags]
    lines += [
        f"Measured {context['date']} with `bench/compare.py --only half --threads "
        f"{context['threads']}`: sdpa {context['versions']['sdpa']} (commit "
        f"{context['commit'] or 'unknown'}), torch {context['versions']['torch']}, "
        f"{context['threads']} threads, median of interleaved samples in one process; load "
        f"average {context['load'][0]:.2f} at the start, {context['load'][1]:.2f} at the end. "
        "This section is measured on its own, possibly on another machine than the sections "
        "around it: compare within its table.",
        "",
        f"CPU: {cpu['model']} ({context.get('cpu_id', 'family/model unknown')}); 16-bit "
        f"relevant flags: {', '.join(present) or 'none'}. "
        + ("AVX512-BF16 is present: bfloat16 products use vdpbf16ps."
           if "avx512_bf16" in flags else
           "No AVX512-BF16: bfloat16 runs the widening path (operands widened to float32 at the "
           "tile pack, float32 FMAs), float16 the F16C conversion; both read half the bytes."),
        "",
    ]
    if context["load"][0] > 1.3 or context["load"][1] > 1.3:
        lines += [f"Warning: the load average was above 1.3 (other processes shared the "
                  f"{cpu['cpus']} CPUs), so the absolute rates are low and noisy; the six "
                  "implementations were sampled interleaved, so the ratios suffer less.", ""]
    header = ("| shape | " + " | ".join(HALF_IMPLS)
              + " | bf16 sdpa/torch | f16 sdpa/torch | sdpa bf16/f32 | sdpa f16/f32 |")
    lines += ["GFLOP/s (FLOPs = 4·B·H·pairs·D, pairs the visible (query, key) pairs):", "",
              header, "|" + "---|" * (header.count("|") - 1)]
    worst = {}
    for row in half["rows"]:
        fields = row["shape"]
        shape = Shape(fields["kind"], fields["heads"], fields["q_len"], fields["kv_len"],
                      fields["head_dim"], fields["causal"], fields["kv_heads"], fields["batch"])
        rate = {name: shape.flops() / row["results"][name]["seconds"] * 1e-9
                for name in HALF_IMPLS}
        for name in HALF_IMPLS:
            diff = row["results"][name].get("max_abs_diff")
            if diff is not None:
                worst[name] = max(worst.get(name, 0.0), diff)
        cells = [f"{rate[name]:.1f}" for name in HALF_IMPLS]
        cells += [f"{rate[a] / rate[b]:.2f}×" for a, b in (
            ("sdpa bfloat16", "torch bfloat16"), ("sdpa float16", "torch float16"),
            ("sdpa bfloat16", "sdpa float32"), ("sdpa float16", "sdpa float32"))]
        lines.append(f"| {shape.label()} | " + " | ".join(cells) + " |")
    lines += ["", "Largest |difference| from sdpa float32 over the rows (standard-normal inputs, "
              "each implementation on its own rounded inputs): "
              + ", ".join(f"{name} {worst[name]:.2g}" for name in HALF_IMPLS if name in worst)
              + ".", ""]
    lines += ["Paths (sdpa's Explain at L=4096 D=64):", ""]
    for dtype, plan in half["plans"].items():
        why = plan.split("why: ", 1)[-1].strip()
        lines.append(f"- {dtype}: `{plan.splitlines()[0]}`; {why}")
    lines += ["", HALF_END]
    return lines


def cpu_identity():
    """"family F model M" of the first CPU (/proc/cpuinfo), which names the microarchitecture
    when the model name does not (a virtual machine's "AMD EPYC")."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break
    except OSError:
        pass
    if "cpu family" not in fields:
        return "family/model unknown"
    family, model = int(fields["cpu family"]), int(fields.get("model", "0"))
    text = f"family {family} (0x{family:x}) model {model} (0x{model:x})"
    return text + AMD_FAMILIES.get((family, model >= 0x30), "")


# AMD's families by (family, model >= 0x30): a name for the report's CPU line, since a virtual
# machine's model name is often just "AMD EPYC".
AMD_FAMILIES = {(23, False): ": AMD Zen 1 / Zen+", (23, True): ": AMD Zen 2",
                (25, False): ": AMD Zen 3", (25, True): ": AMD Zen 3 / Zen 4",
                (26, False): ": AMD Zen 5", (26, True): ": AMD Zen 5"}


def replace_section(path, lines, begin_marker, end_marker):
    """Writes a marked section into the report at `path`, keeping everything else: between its
    markers if it has them, else before ## Memory (or ## Plot, ## Notes, or at the end)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    section = "\n".join(lines)
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin >= 0 and end > begin:
        after = text[end + len(end_marker):]
        text = text[:begin] + section.rstrip("\n") + after
    else:
        at = next((i for i in (text.find("\n" + h) for h in ("## Memory", "## Plot", "## Notes"))
                   if i >= 0), -1)
        if at < 0:
            text = text + ("\n" if text and not text.endswith("\n") else "") + section
        else:
            text = text[:at + 1] + section + "\n" + text[at + 1:]
    with open(path, "w") as f:
        f.write(text)


def main_half(args, log):
    """--only half: measure the 16-bit section (or take it from --from-json) and replace it in
    <out>/benchmarks.md."""
    if args.from_json:
        with open(args.from_json) as f:
            run = json.load(f)
        half, context = run["half"], run["half_context"]
        context["cpu"]["flags"] = set(context["cpu"]["flags"])
    else:
        load_start = os.getloadavg()[0]
        peers = Peers(args.threads)
        half = measure_half(peers, args, log)
        context = {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "threads": args.threads,
            "cpu": cpu_description(), "cpu_id": cpu_identity(), "commit": repo_commit(),
            "load": (load_start, os.getloadavg()[0]),
            "versions": {"sdpa": peers.sdpa.__version__,
                         "torch": peers.torch.__version__ if peers.torch else "not installed"},
        }
    if args.json:
        cpu = dict(context["cpu"], flags=sorted(context["cpu"]["flags"]))
        with open(args.json, "w") as f:
            json.dump({"half": half, "half_context": dict(context, cpu=cpu)}, f, indent=1)
    os.makedirs(args.out, exist_ok=True)
    report = os.path.join(args.out, "benchmarks.md")
    replace_section(report, section_half(half, context), HALF_BEGIN, HALF_END)
    log(f"wrote the 16-bit section of {report}")
    return 0 if "rows" in half else 1


def backward_grid(quick):
    """Issue 6: B=1, H=8, D in {64, 128}, L in {1024, 4096}, causal and not."""
    if quick:
        return [Shape("backward", 2, 128, 128, 32, causal) for causal in (False, True)]
    return [Shape("backward", 8, length, length, dim, causal)
            for dim in (64, 128) for causal in (False, True) for length in (1024, 4096)]


def measure_backward(peers, quick, log):
    """Backward of ours (sdpa.attention_backward) against PyTorch's (autograd through
    F.scaled_dot_product_attention), interleaved, medians of 5 samples; FLOPs 2.5x forward."""
    np = peers.np
    rows = []
    for shape in backward_grid(quick):
        rng = np.random.default_rng(7)
        q, k, v, g = (rng.standard_normal((1, shape.heads, shape.q_len, shape.head_dim),
                                          dtype=np.float32) for _ in range(4))
        causal = "top_left" if shape.causal else None
        out, lse = peers.sdpa.attention(q, k, v, causal=causal, return_lse=True)
        functions = {"sdpa": lambda: peers.sdpa.attention_backward(g, q, k, v, out, lse,
                                                                   causal=causal)}
        if peers.torch is not None:
            torch = peers.torch
            tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
            tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                                    is_causal=shape.causal)
            tg = torch.from_numpy(g)
            functions["torch"] = lambda: torch.autograd.grad(tout, (tq, tk, tv), tg,
                                                             retain_graph=True)
        calls, samples = {}, {name: [] for name in functions}
        for name, function in functions.items():
            calls[name] = max(1, int(0.25 / max(time_sample(function, 1), 1e-6)))
        for _ in range(3 if quick else 5):
            for name, function in functions.items():
                samples[name].append(time_sample(function, calls[name]))
                time.sleep(0.02)
        flops = 2.5 * shape.flops()
        row = {"label": shape.label(), "head_dim": shape.head_dim, "causal": shape.causal,
               "length": shape.q_len}
        for name in functions:
            row[name] = statistics.median(samples[name])
            row[name + "_gflops"] = flops / row[name] * 1e-9
        rows.append(row)
        log(f"backward {shape.label()}: " + ", ".join(
            f"{name} {row[name] * 1e3:.1f} ms" for name in functions))
    return rows


# -------------------------------------------------------------------------------------------
# Variants (issue 7): forward_bench's rows Window/, Varlen/ and Variant/ (bench/forward_bench.cc
# says what each row runs), sampled interleaved in one process.

VARIANT_FILTER = "^(Window|Varlen|Variant)/"
VARIANT_ROW = re.compile(r"(?P<family>Window|Varlen|Variant)/(?P<pass>Forward|Backward)/"
                         r"(?P<shape>.+)/(?P<causal>top_left|bottom_right)/(?P<tag>[^/]+)"
                         r"/threads:(?P<threads>\d+)(?:/real_time)?$")
VARIANT_COUNTERS = ("GFLOP/s", "peak_frac", "keys_per_row", "us_per_key")


def measure_variants(binary, args, log):
    """Runs forward_bench's variant rows once, in one process: `args.repeats` repetitions of each
    row, interleaved in random order (Google Benchmark's --benchmark_enable_random_interleaving, so
    a busy spell hits every row alike), each repetition at least `args.sample_seconds` of
    back-to-back calls. Returns every repetition's time and counters per row; the report takes
    their medians."""
    env = dict(os.environ, SDPA_NUM_THREADS=str(args.threads))
    inside = os.path.abspath(binary).startswith(REPO + os.sep)
    shown = os.path.relpath(binary, REPO) if inside else binary
    flags = [f"--benchmark_filter={VARIANT_FILTER}", f"--benchmark_repetitions={args.repeats}",
             "--benchmark_enable_random_interleaving=true",
             f"--benchmark_min_time={args.sample_seconds}"]
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "variants.json")
        command = [binary, *flags, f"--benchmark_out={out}", "--benchmark_out_format=json",
                   "--benchmark_color=false"]
        log(f"variants: {shown} {' '.join(flags)}")
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:  # the console table's rows (buffered by the pipe)
                if VARIANT_ROW.match(line.split(" ")[0]) or "ERROR" in line:
                    log("  " + " ".join(line.split()[:3]))
        if process.returncode != 0:
            return {"skipped": f"`{shown}` exited with status {process.returncode}"}
        with open(out) as f:
            report = json.load(f)
    rows = {}
    for entry in report["benchmarks"]:
        if entry.get("run_type", "iteration") != "iteration":
            continue  # Google Benchmark's own mean/median/stddev
        name = entry.get("run_name", entry["name"])
        match = VARIANT_ROW.match(name)
        if not match:
            continue
        row = rows.setdefault(name, dict(match.groupdict(), name=name, label=entry.get("label"),
                                         samples={"ms": []}))
        if entry.get("error_occurred"):
            row["error"] = entry.get("error_message", "error")
            continue
        factor = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[entry.get("time_unit", "ns")]
        row["samples"]["ms"].append(entry["real_time"] * factor)
        for counter in VARIANT_COUNTERS:
            if counter in entry:
                row["samples"].setdefault(counter, []).append(entry[counter])
    context = report.get("context", {})
    peak = context.get(f"fma_peak_gflops_threads_{args.threads}")
    return {"rows": list(rows.values()), "source": shown, "flags": flags,
            "repeats": args.repeats, "sample_seconds": args.sample_seconds,
            "threads": args.threads, "quick": args.quick,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": repo_commit(),
            "load": (load_start, os.getloadavg()[0]), "seconds": time.perf_counter() - start,
            "peak_gflops": float(peak) if peak else None, "warning": context.get("warning")}


def engine_plan(peers, shape):
    """The first line of sdpa.explain for `shape`: path, tiles, SIMD target, threads."""
    np = peers.np
    # np.zeros maps untouched pages: free even for the largest shape; explain reads no data.
    q = np.zeros((shape.batch, shape.heads, shape.q_len, shape.head_dim), np.float32)
    k = np.zeros((shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim), np.float32)
    v = np.zeros((shape.batch, shape.kv_heads, shape.kv_len, shape.v_dim), np.float32)
    text = peers.sdpa.explain(q, k, v, causal="top_left" if shape.causal else None)
    return text.splitlines()[0].replace("sdpa plan: ", "")


# -------------------------------------------------------------------------------------------
# Memory: peak RSS increase of one long call, beyond its inputs and output, in a fresh process.

MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import sdpa

    def peak_and_current():
        # VmHWM/VmRSS of this process. resource.getrusage's ru_maxrss would do on its own in a
        # process started fresh, but Linux folds into it the peak of the image this process
        # was exec'ed from (the benchmark process, GiBs), which hides the call's growth.
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    fields[key] = int(value.split()[0]) * 1024
        return fields["VmHWM"], fields["VmRSS"]

    length, heads, dim, threads = (int(a) for a in sys.argv[1:5])
    sdpa.set_num_threads(threads)
    rng = np.random.default_rng(0)
    q, k, v = (np.empty((1, heads, length, dim), np.float32) for _ in range(3))
    for a in (q, k, v):
        rng.standard_normal(out=a, dtype=np.float32)  # in place: no temporary peak
    small = np.zeros((1, heads, 64, dim), np.float32)
    sdpa.attention(small, small, small)  # start the engine's threads outside the measurement
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (and ru_maxrss's own part) to the current RSS
    peak_before, rss_before = peak_and_current()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    out = sdpa.attention(q, k, v)
    seconds = time.perf_counter() - start
    peak_after, _ = peak_and_current()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": rss_before, "after": peak_after, "peak_before": peak_before,
                      "maxrss_before": maxrss_before, "maxrss_after": maxrss_after,
                      "out_bytes": out.nbytes, "input_bytes": q.nbytes + k.nbytes + v.nbytes,
                      "seconds": seconds}))
""")


def measure_memory(length, heads, dim, threads):
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(length), str(heads),
                             str(dim), str(threads)], capture_output=True, text=True,
                            timeout=1200)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or ["failed"]}
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    probe.update(length=length, heads=heads, dim=dim,
                 flops=Shape("prefill", heads, length, length, dim).flops(),
                 extra_bytes=probe["after"] - probe["before"] - probe["out_bytes"])
    return probe


# -------------------------------------------------------------------------------------------
# The report


def fmt(value, digits=3, suffix=""):
    """`digits` significant digits, without an exponent for large values; "–" for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    text = f"{value:.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return text + suffix


def pct(fraction):
    return "–" if fraction is None else f"{100 * fraction:.0f}%"


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def ratio(a, b):
    return a / b if a and b else None


def read_notes(path):
    """The hand-written text between the notes markers of an earlier report, if any."""
    return read_between(path, NOTES_BEGIN, NOTES_END)


def read_between(path, begin_marker, end_marker, inclusive=False):
    """The text between two markers of an earlier report (with the markers when `inclusive`),
    or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < begin:
        return None
    if inclusive:
        return text[begin:end + len(end_marker)]
    return text[begin + len(begin_marker):end].strip("\n")


def summarize(shape, result, peak, bandwidth):
    """Rates and ratios of one shape: GFLOP/s per implementation, fraction of the peak, ours over
    the peers; for decode also GB/s of K/V, fraction of the bandwidth and the thread scaling."""
    def per_second(name, amount):
        seconds = result.get(name, {}).get("seconds")
        return amount / seconds if seconds else None

    row = {"shape": shape, "result": result,
           "ms": {name: result[name]["seconds"] * 1e3 for name in result
                  if "seconds" in result[name]}}
    row["gflops"] = {name: per_second(name, shape.flops() * 1e-9) for name in IMPLS}
    ours = row["gflops"]["sdpa"]
    row["peak_frac"] = ours / peak if ours and peak else None
    row["vs_torch"] = ratio(ours, row["gflops"]["torch"])
    row["vs_numpy"] = ratio(ours, row["gflops"]["numpy"])
    row["torch_diff"] = result.get("torch", {}).get("max_abs_diff")
    row["noisy"] = any(spread(result.get(name, {})) > NOISY_SPREAD for name in ("sdpa", "torch"))
    if shape.kind == "decode":
        row["gbps"] = {name: per_second(name, shape.kv_bytes() * 1e-9) for name in IMPLS}
        gbps = row["gbps"]["sdpa"]
        row["bw_frac"] = gbps / bandwidth if gbps and bandwidth else None
        one = row["ms"].get("sdpa_1t")
        row["speedup"] = ratio(one, row["ms"].get("sdpa"))
    return row


def spread(entry):
    """How far apart an implementation's samples are, over their median: slowest minus fastest,
    leaving out one at each end when there are 5 or more (a single hiccup does not move the
    median either); 0 without samples."""
    samples = sorted(entry.get("samples") or [])
    if len(samples) >= 5:
        samples = samples[1:-1]
    return (samples[-1] - samples[0]) / entry["seconds"] if len(samples) > 1 else 0.0


def section_intro(context):
    threads = context["threads"]
    quick = ""
    if context["quick"]:
        quick = " in --quick mode (a smoke test: these are not measurements)"
    return [
        "# Benchmarks: attention forward on the CPU", "",
        f"Generated by `bench/compare.py` on {context['date']}{quick}. Reproduce on a quiet "
        "machine with", "",
        "    cmake -S . -B build-bench -G Ninja && cmake --build build-bench -j2",
        "    pip install .",
        "    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\",
        f"        python bench/compare.py --threads {threads}", "",
        "Every implementation runs in one process with the same thread count. Per shape they take "
        "turns (in a rotating order) and each figure is the median of "
        f"{context['repeats']} samples (3 where a call takes over 2 s), a sample being "
        f"back-to-back calls for at least {context['sample_seconds']} s. "
        "FLOPs = 2·B·H·pairs·(D + Dv), where "
        "pairs counts the visible (query, key) pairs: Lq·Lkv, exactly L·(L+1)/2 for causal, so a "
        "causal row at the same GFLOP/s is as efficient as a full one. Inputs are standard normal "
        "float32 in (B, H, L, D) layout; every call allocates its output. `sdpa` is the engine "
        "(`sdpa.attention`), `reference` its float64-accumulating oracle, `numpy` the unfused "
        "softmax(Q·Kᵀ·scale)·V in float32, `torch` PyTorch's "
        "`torch.nn.functional.scaled_dot_product_attention`.", ""]


def section_machine(context):
    threads, cpu, limits = context["threads"], context["cpu"], context["limits"]
    flags = cpu["flags"]
    simd = ", ".join(f for f in ("avx512f", "avx2", "fma", "neon") if f in flags) or "?"
    memory = f"{cpu['memory_bytes'] / 2**30:.0f} GiB" if cpu["memory_bytes"] else "?"
    versions = context["versions"]
    lines = [
        "## Machine", "",
        f"- CPU: {cpu['model']}, {plural(cpu['cpus'], 'logical CPU')}"
        f"{' (virtual machine)' if 'hypervisor' in flags else ''}; {simd}; caches (per core, "
        f"shared): {', '.join(cpu['caches']) or '?'}; memory {memory}.",
        f"- Threads: {threads} for every implementation (`sdpa.set_num_threads`, "
        "`torch.set_num_threads`, threadpoolctl for numpy's BLAS).",
        f"- Software: Python {platform.python_version()}, sdpa {versions['sdpa']} (imported "
        f"from `{context.get('sdpa_from', '?')}`, built from commit "
        f"{context.get('commit') or '?'}), numpy {versions['numpy']}, torch {versions['torch']}.",
        f"- The engine's plan for the largest prefill shape: `{context['plan_prefill']}`; "
        f"for the longest decode: `{context['plan_decode']}`."]
    for lib in context["blas"]:
        where = os.path.basename(os.path.dirname(lib.get("filepath") or ""))
        lines.append(f"- BLAS for numpy: {lib.get('internal_api')} {lib.get('version')} "
                     f"(from {where}), kernel {lib.get('architecture')}, "
                     f"{plural(lib.get('num_threads'), 'thread')}.")
    if context["openblas_env"]:
        lines.append(f"- **Warning:** {context['openblas_env']} set in the environment: numpy's "
                     "OpenBLAS may use a slower kernel than this CPU allows.")
    start, end = context["load"]
    # The run itself keeps `threads` threads busy, so only load beyond that is someone else's.
    busy = start > 1.3 or end > threads + 1.3
    lines.append(f"- Load average (1 min): {start:.2f} before the run, {end:.2f} at its end (the "
                 f"run itself accounts for up to {threads})"
                 + (" — **the machine was busy; treat the figures with caution**." if busy
                    else "."))
    peaks = ", ".join(f"{plural(count, 'thread')}: {value:.1f} GFLOP/s"
                      for count, value in sorted(limits["peak_gflops"].items()))
    bandwidths = ", ".join(f"{plural(count, 'thread')}: {value:.1f} GB/s"
                           for count, value in sorted(limits["bandwidth_gbps"].items()))
    lines += [f"- float32 FMA peak: {peaks or 'not measured'}.",
              f"- Read bandwidth (streaming sum over 512 MiB): {bandwidths or 'not measured'}.",
              f"- Both measured by {limits['source']}."]
    one, many = limits["peak_gflops"].get(1), limits["peak_gflops"].get(threads)
    if one and many and threads > 1 and many < 0.8 * threads * one:
        lines.append(f"- **Warning:** the {threads}-thread peak is only {many / one:.2f}× the "
                     "1-thread peak: another process held a core while it was measured, and "
                     "every % of peak below is inflated.")
    return lines + [""]


def section_targets(rows, decode_rows, memory, threads):
    """Issue 3's targets, each with the value reached and whether it is met."""
    lines = ["## Targets", "", "| target (issue 3) | required | reached | status |",
             "|---|---|---|---|"]

    def add(what, required, reached, ok):
        status = "–" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"| {what} | {required} | {reached} | {status} |")

    def lowest(pairs, show):
        """(value, where) of the smallest value, formatted, and the value."""
        pairs = [(value, shape) for value, shape in pairs if value is not None]
        if not pairs:
            return "not measured", None
        value, shape = min(pairs, key=lambda pair: pair[0])
        return f"{show(value)} (lowest, at {shape.label()})", value

    text, worst = lowest([(r["vs_torch"], r["shape"]) for r in rows + decode_rows],
                         lambda x: f"{x:.2f}×")
    add("throughput vs PyTorch SDPA, every shape", "≥ 1.5×", text,
        None if worst is None else worst >= 1.5)
    for dim, required in ((128, 0.75), (64, 0.65)):
        for causal in (False, True):
            subset = [(r["peak_frac"], r["shape"]) for r in rows
                      if r["shape"].head_dim == dim and r["shape"].causal == causal
                      and r["shape"].q_len >= 1024]
            text, worst = lowest(subset, lambda x: f"{100 * x:.1f}%")
            kind = "causal, in causal FLOPs" if causal else "full"
            add(f"D={dim}, L ≥ 1024, {kind}: fraction of the {threads}-thread FMA peak",
                f"≥ {required:.0%}", text, None if worst is None else worst >= required)
    if decode_rows:
        longest = max(decode_rows, key=lambda r: r["shape"].kv_len)
        kv_len, fraction, speedup = longest["shape"].kv_len, longest["bw_frac"], longest["speedup"]
        shown = "–" if fraction is None else f"{100 * fraction:.1f}%"
        add(f"decode Lkv={kv_len}: fraction of the read bandwidth", "≥ 80%", shown,
            None if fraction is None else fraction >= 0.8)
        add(f"decode Lkv={kv_len}: {threads} threads vs 1", "≥ 1.7×",
            "–" if speedup is None else f"{speedup:.2f}×",
            None if speedup is None else speedup >= 1.7)
    text, worst = lowest([(r["vs_numpy"], r["shape"]) for r in rows if r["shape"].q_len <= 256],
                         lambda x: f"{x:.2f}×")
    add("L ≤ 256: throughput vs unfused numpy", "≥ 1×", text,
        None if worst is None else worst >= 1.0)
    if memory and "extra_bytes" in memory:
        extra = max(0, memory["extra_bytes"]) / 2**20
        add(f"memory, L={memory['length']} H={memory['heads']} D={memory['dim']}: peak RSS "
            "beyond inputs and output", "< 64 MiB", f"{extra:.1f} MiB", extra < 64)
    return lines + [""]


def section_prefill(rows):
    lines = ["## Prefill: B=1, Lq = Lkv = L", "",
             "GFLOP/s per implementation; causal counts only the visible pairs.", "",
             "| D | causal | L | sdpa ms | sdpa GFLOP/s | % of peak | torch | numpy | reference | "
             "ours/torch | ours/numpy | max abs diff vs torch |", "|" + "---|" * 12]
    for row in rows:
        s, g = row["shape"], row["gflops"]
        lines.append(
            f"| {s.head_dim} | {'yes' if s.causal else 'no'} | {s.q_len} | "
            f"{fmt(row['ms'].get('sdpa'))} | {fmt(g['sdpa'])} | {pct(row['peak_frac'])} | "
            f"{fmt(g['torch'])} | {fmt(g['numpy'])} | {fmt(g['reference'])} | "
            f"{fmt(row['vs_torch'], 3, '×')}{NOISY_MARK if row['noisy'] else ''} | "
            f"{fmt(row['vs_numpy'], 3, '×')} | {fmt(row['torch_diff'], 2)} |")
    return lines + [""] + noisy_footnote(rows)


def noisy_footnote(rows):
    if not any(row["noisy"] for row in rows):
        return []
    return [f"{NOISY_MARK} the samples of sdpa or torch on this shape spread by more than "
            f"{NOISY_SPREAD:.0%} of their median: something else ran meanwhile; the ratio is "
            "less certain.", ""]


def section_decode(decode_rows, threads):
    if not decode_rows:
        return []
    s0 = decode_rows[0]["shape"]
    lines = [f"## Decode: B=1, H={s0.heads}, D={s0.head_dim}, Lq=1", "",
             "GB/s of K and V read per call (each is read once; 0.5 flop per byte, so memory "
             "bandwidth is the limit).", "",
             "| Lkv | K/V MiB | sdpa ms | sdpa GB/s | % of bandwidth | 1 thread ms | "
             f"{threads} threads vs 1 | torch GB/s | numpy GB/s | reference GB/s | ours/torch | "
             "ours/numpy |", "|" + "---|" * 12]
    for row in decode_rows:
        s, g = row["shape"], row["gbps"]
        lines.append(
            f"| {s.kv_len} | {fmt(s.kv_bytes() / 2**20)} | {fmt(row['ms'].get('sdpa'))} | "
            f"{fmt(g['sdpa'])} | {pct(row['bw_frac'])} | {fmt(row['ms'].get('sdpa_1t'))} | "
            f"{fmt(row['speedup'], 3, '×')} | {fmt(g['torch'])} | {fmt(g['numpy'])} | "
            f"{fmt(g['reference'])} | {fmt(row['vs_torch'], 3, '×')}"
            f"{NOISY_MARK if row['noisy'] else ''} | {fmt(row['vs_numpy'], 3, '×')} |")
    return lines + [""] + noisy_footnote(decode_rows)


def section_backward(rows, peak):
    """Issue 6: ours vs PyTorch's backward; targets 1.5x PyTorch and 40% of the peak."""
    if not rows:
        return []
    lines = ["## Backward: B=1, H=8 (2 with --quick), Lq = Lkv = L", "",
             "GFLOP/s with FLOPs = 2.5 × the forward's (causal: visible pairs only). Ours: "
             "`sdpa.attention_backward` (out and lse from `sdpa.attention`); PyTorch: "
             "`torch.autograd.grad` through `scaled_dot_product_attention` (graph kept, so only "
             "the backward is timed). Targets (issue 6, L ≥ 1024): ≥ 1.5× PyTorch, ≥ 40% of the "
             "FMA peak.", "",
             "| D | causal | L | sdpa ms | sdpa GFLOP/s | % of peak | torch ms | torch GFLOP/s "
             "| ours/torch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        torch_ms = r.get("torch")
        lines.append(
            f"| {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['length']} "
            f"| {fmt(r['sdpa'] * 1e3)} | {fmt(r['sdpa_gflops'])} "
            f"| {pct(r['sdpa_gflops'] / peak) if peak else '–'} "
            f"| {fmt(torch_ms * 1e3) if torch_ms else '–'} "
            f"| {fmt(r['torch_gflops']) if torch_ms else '–'} "
            f"| {fmt(ratio(torch_ms, r['sdpa']), 3, '×')} |")
    return lines + [""]


def section_skipped(shapes, results):
    skipped = {}
    for shape, result in zip(shapes, results):
        for name, entry in result.items():
            if "skipped" in entry:
                skipped.setdefault((name, entry["skipped"]), []).append(shape.label())
    if not skipped:
        return []
    lines = ["Not run:", ""]
    for (name, reason), labels in skipped.items():
        shown = "; ".join(labels[:3]) + ("; …" if len(labels) > 3 else "")
        lines.append(f"- {name}: {reason}, on {plural(len(labels), 'shape')} ({shown}).")
    return lines + [""]


VARIANT_DESCRIPTIONS = {
    "plain": "causal only",
    "alibi": "`alibi_slopes` (2^(-8(h+1)/H))",
    "softcap": "`softcap` = 50",
    "sinks": "`sinks` (one per head; the backward also writes their gradient)",
    "dropout:0.1": "`dropout_p` = 0.1 (Philox, regenerated by the backward)",
    "score_mod_alibi": "ALiBi as a custom `score_mod` (`sdpa::MakeCustom`)",
    "doc_mask_mod": "4 documents: custom `mask_mod`",
    "doc_block_mask": "4 documents: `mask_mod` and a `block_mask`",
    "doc_bool_mask": "4 documents: bool `mask` [1, 1, L, L]",
    "doc_varlen": "4 documents as varlen sequences (`cu_seqlens`)",
}


VARLEN_LAYOUTS = ("packed", "padded_mask", "padded")


def variant_order(row):
    """Rows in forward_bench's order (the JSON has them in the order they happened to run):
    family, forward before backward, then windows by size, layouts and variants as listed."""
    tag = row["tag"]
    if row["family"] == "Window":
        left = tag.partition(":")[2]
        position = math.inf if left == "inf" else float(left) if left.isdigit() else -1
    else:
        known = VARLEN_LAYOUTS if row["family"] == "Varlen" else tuple(VARIANT_DESCRIPTIONS)
        position = known.index(tag) if tag in known else len(known)
    return (("Window", "Varlen", "Variant").index(row["family"]), row["pass"] != "Forward",
            position, tag)


def variant_medians(row):
    """The medians of a row's samples: ms and each counter; noisy when they spread."""
    samples = row.get("samples") or {}
    medians = {key: statistics.median(values) for key, values in samples.items() if values}
    if "ms" in medians:
        medians["noisy"] = spread({"samples": samples["ms"], "seconds": medians["ms"]}) \
            > NOISY_SPREAD
    return medians


def section_variants(variants):
    """Issue 7's benchmarks: window cost against the window, packed varlen against padding, and
    each variant's cost on one shape; between markers, so --only variants can replace it."""
    lines = [VARIANTS_BEGIN, "## Variants (issue 7): sliding window, varlen, variant overheads", ""]
    if not variants or "rows" not in variants:
        reason = (variants or {}).get("skipped", "not measured")
        return lines + [f"Not measured: {reason}. Regenerate this section alone with "
                        "`python bench/compare.py --only variants`.", "", VARIANTS_END, ""]
    quick = " in --quick mode (a smoke test: these are not measurements)" \
        if variants.get("quick") else ""
    start, end = variants["load"]
    threads = variants["threads"]
    busy = start > 1.3 or end > threads + 1.3
    peak = variants.get("peak_gflops")
    source = variants["source"]
    build = source[:-len("/bench/forward_bench")] \
        if source.endswith("/bench/forward_bench") else "build-bench"
    lines += [
        f"Measured on {variants['date']}{quick} at commit {variants.get('commit') or '?'} by "
        f"`{variants['source']}` (rows `Window/`, `Varlen/`, `Variant/`) with {threads} threads, "
        f"in {variants['seconds'] / 60:.1f} min; load average {start:.2f} before, {end:.2f} after"
        + (" — **the machine was busy; treat the figures with caution**" if busy else "")
        + ". Regenerate this section alone (the rest of this file is kept) with", "",
        f"    cmake -S . -B {build} -G Ninja && cmake --build {build} -j2 --target forward_bench",
        f"    python bench/compare.py --only variants --threads {threads} "
        f"--bench-binary {source}", "",
        f"Each figure is the median of {variants['repeats']} repetitions, interleaved in random "
        "order in one process (`--benchmark_enable_random_interleaving`), a repetition being "
        f"back-to-back calls for at least {variants['sample_seconds']} s. float32, H=8, D=64, "
        "causal. GFLOP/s counts only the visible (query, key) pairs, 2·(D + Dv) FLOPs each, 2.5× "
        "that for the backward; % of peak is against the float32 FMA peak forward_bench measured "
        f"at its start ({fmt(peak)} GFLOP/s with {threads} threads).", ""]
    if variants.get("warning"):
        lines += [f"**Warning:** {variants['warning']}.", ""]
    rows = sorted((dict(row, **variant_medians(row)) for row in variants["rows"]),
                  key=variant_order)
    errors = [row for row in rows if row.get("error")]

    def by(family, pass_name):
        return [r for r in rows if r["family"] == family and r["pass"] == pass_name]

    def ms(row):
        return f"{fmt(row.get('ms'))}{NOISY_MARK if row.get('noisy') else ''}"

    # Sliding window.
    window = by("Window", "Forward") + by("Window", "Backward")
    if window:
        lines += [
            "### Sliding window: cost against the window", "",
            "B=1, causal (bottom-right) with window (left, 0); forward at L=16384, backward at "
            "L=4096; `inf` is plain causal. Keys per row: the mean number of keys a query sees "
            "(min(i, left) + 1). µs per key: the time over it, flat when the cost grows linearly "
            "with the window.", "",
            "| pass | L | window left | keys per row | ms | µs per key | GFLOP/s | % of peak | "
            "time vs inf |", "|---|---|---|---|---|---|---|---|---|"]
        for row in window:
            unbounded = next((r for r in window if r["pass"] == row["pass"]
                              and r["tag"] == "left:inf"), {})
            length = re.search(r"/L:(\d+)", "/" + row["shape"])
            lines.append(
                f"| {row['pass'].lower()} | {length.group(1) if length else '?'} "
                f"| {row['tag'].split(':')[1]} | {fmt(row.get('keys_per_row'), 4)} | {ms(row)} "
                f"| {fmt(row.get('us_per_key'))} | {fmt(row.get('GFLOP/s'))} "
                f"| {pct(row.get('peak_frac'))} "
                f"| {fmt(ratio(row.get('ms'), unbounded.get('ms')), 3, '×')} |")
        lines.append("")

    # Varlen against padding.
    varlen = by("Varlen", "Forward") + by("Varlen", "Backward")
    if varlen:
        layouts = {
            "packed": "packed along L, `cu_seqlens_q/k`",
            "padded_mask": "padded to [8, H, 4096, D], causal + key-padding bool mask",
            "padded": "padded to [8, H, 4096, D], causal, no mask",
        }
        lines += [
            "### Packed varlen against padding", "",
            "8 causal sequences of 4096, 517, 1283, 2904, 1811, 3369, 955 and 1449 tokens (16384 "
            "in all, half of 8 × 4096). GFLOP/s counts the sequences' own pairs in every layout, "
            "so the padded rows show the rate of useful work; the last column is the time over "
            "the packed layout's.", "",
            "| pass | layout | ms | useful GFLOP/s | % of peak | time vs packed |",
            "|---|---|---|---|---|---|"]
        for row in varlen:
            packed = next((r for r in varlen if r["pass"] == row["pass"]
                           and r["tag"] == "packed"), {})
            lines.append(
                f"| {row['pass'].lower()} | {layouts.get(row['tag'], row['tag'])} | {ms(row)} "
                f"| {fmt(row.get('GFLOP/s'))} | {pct(row.get('peak_frac'))} "
                f"| {fmt(ratio(row.get('ms'), packed.get('ms')), 3, '×')} |")
        lines.append("")

    # Each variant's overhead.
    forward, backward = by("Variant", "Forward"), by("Variant", "Backward")
    if forward or backward:
        tags = list(dict.fromkeys(r["tag"] for r in forward + backward))
        plain = {r["pass"]: r for r in forward + backward if r["tag"] == "plain"}
        lines += [
            "### Variant overheads", "",
            "B=1, L=4096, causal (top-left). The document rows see only their document's pairs "
            "(4 documents of 1337, 611, 1429 and 719 tokens), so they do less work than plain: "
            "their GFLOP/s count those pairs, and time vs plain shows what skipping the rest "
            "saves.", "",
            "| variant | forward ms | vs plain | % of peak | backward ms | vs plain | % of peak |",
            "|---|---|---|---|---|---|---|"]
        for tag in tags:
            cells = []
            for pass_name, subset in (("Forward", forward), ("Backward", backward)):
                row = next((r for r in subset if r["tag"] == tag), {})
                base = plain.get(pass_name, {})
                cells += [ms(row) if row else "–",
                          fmt(ratio(row.get("ms"), base.get("ms")), 3, "×"),
                          pct(row.get("peak_frac"))]
            lines.append(f"| `{tag}`: {VARIANT_DESCRIPTIONS.get(tag, tag)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    if any(row.get("noisy") for row in rows):
        lines += [f"{NOISY_MARK} the repetitions of this row spread by more than "
                  f"{NOISY_SPREAD:.0%} of their median: something else ran meanwhile.", ""]
    if errors:
        lines += ["Failed rows:", ""] + [f"- `{r['name']}`: {r['error']}" for r in errors] + [""]
    return lines + [VARIANTS_END, ""]


def replace_variants_section(path, lines):
    """Writes the Variants section into the report at `path`, keeping everything else."""
    replace_section(path, lines, VARIANTS_BEGIN, VARIANTS_END)


def section_memory(memory):
    lines = ["## Memory", ""]
    if not memory:
        return lines + ["Not measured.", ""]
    if "extra_bytes" not in memory:
        return lines + [f"The memory probe failed: {memory.get('error')}", ""]
    mib = 2**20
    grew = (memory["after"] - memory["before"]) / mib
    scores = 4 * memory["heads"] * memory["length"] ** 2 / 2**30
    return lines + [
        f"One `sdpa.attention` call with L = {memory['length']}, H = {memory['heads']}, "
        f"D = {memory['dim']}, float32 ({memory['input_bytes'] / mib:.0f} MiB of inputs, "
        f"{memory['out_bytes'] / mib:.0f} MiB of output), in a fresh process after a warm-up "
        f"call on a small shape: the peak RSS grew by {grew:.1f} MiB during the call, that is "
        f"**{max(0, memory['extra_bytes']) / mib:.1f} MiB beyond the output** "
        "(VmHWM of /proc/self/status, reset to the current RSS through /proc/self/clear_refs "
        "before the call; `resource.getrusage` gives the same when the process did not inherit "
        f"a larger peak through exec). The call took {memory['seconds']:.1f} s "
        f"({memory['flops'] / memory['seconds'] * 1e-9:.0f} GFLOP/s). An unfused implementation "
        f"would hold {scores:.0f} GiB of scores.", ""]


def write_report(path, context, shapes, results, memory):
    threads = context["threads"]
    peak = context["limits"]["peak_gflops"].get(threads)
    bandwidth = context["limits"]["bandwidth_gbps"].get(threads)
    summaries = [summarize(shape, result, peak, bandwidth)
                 for shape, result in zip(shapes, results)]
    rows = [r for r in summaries if r["shape"].kind == "prefill"]
    decode_rows = [r for r in summaries if r["shape"].kind == "decode"]
    notes = context.get("notes")
    if notes is None:
        notes = "(Hand-written analysis goes here; compare.py keeps it when it rewrites this file.)"
    lines = (section_intro(context) + section_machine(context)
             + section_targets(rows, decode_rows, memory, threads) + section_prefill(rows)
             + section_decode(decode_rows, threads)
             + section_backward(context.get("backward") or [], peak)
             + section_skipped(shapes, results)
             + variants_lines(context)
             + ([context["previous_half"], ""] if context.get("previous_half") else [])
             + section_memory(memory)
             + ["## Plot", "", "![throughput vs L](benchmarks.png)", ""]
             + ["## Notes", "", NOTES_BEGIN, notes, NOTES_END, ""])
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return rows, decode_rows


def variants_lines(context):
    """The Variants section of this run; when it measured none, the one of the report it
    replaces (which says when it was measured), if any."""
    variants = context.get("variants")
    previous = context.get("previous_variants")
    if (not variants or "rows" not in variants) and previous:
        return [previous, ""]
    return section_variants(variants)


def write_plot(path, rows, decode_rows, context):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    threads = context["threads"]
    peak = context["limits"]["peak_gflops"].get(threads)
    bandwidth = context["limits"]["bandwidth_gbps"].get(threads)
    dims = sorted({r["shape"].head_dim for r in rows})
    figure = plt.figure(figsize=(15, 4.2 * len(dims)), layout="constrained")
    spec = figure.add_gridspec(len(dims), 3)
    for i, dim in enumerate(dims):
        for j, causal in enumerate((False, True)):
            axis = figure.add_subplot(spec[i, j])
            subset = [r for r in rows if r["shape"].head_dim == dim and r["shape"].causal == causal]
            for name in IMPLS:
                points = [(r["shape"].q_len, r["gflops"][name]) for r in subset
                          if r["gflops"][name]]
                if points:
                    axis.plot(*zip(*points), marker="o", label=name, color=COLORS[name])
            if peak:
                # Linear from 0 to the peak: the height of a line is its fraction of the peak.
                axis.axhline(peak, color="black", linestyle="--", linewidth=1,
                             label=f"FMA peak, {threads} threads")
                target = TARGET_PEAK_FRACTION.get(dim)
                if target:
                    axis.axhline(target * peak, color="black", linestyle=":", linewidth=1,
                                 label="target of issue 3")
                axis.set_ylim(0, 1.05 * peak)
            axis.set_xscale("log", base=2)
            axis.set_xlabel("L (Lq = Lkv)")
            axis.set_ylabel("GFLOP/s")
            heads = subset[0]["shape"].heads if subset else "?"
            axis.set_title(f"D={dim}, {'causal' if causal else 'full'}, H={heads}")
            axis.grid(True, alpha=0.3)
            if i == 0 and j == 0:
                figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center",
                              ncol=6, fontsize=9)
    if decode_rows:
        axis = figure.add_subplot(spec[:, 2])
        names = [n for n in IMPLS if any(r["gbps"][n] for r in decode_rows)]
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            xs = [i + k * width for i in range(len(decode_rows))]
            axis.bar(xs, [r["gbps"][name] or 0 for r in decode_rows], width, label=name,
                     color=COLORS[name])
        axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(decode_rows))])
        axis.set_xticklabels([f"Lkv={r['shape'].kv_len}" for r in decode_rows])
        if bandwidth:
            axis.axhline(bandwidth, color="black", linestyle="--", linewidth=1,
                         label=f"read bandwidth, {threads} threads")
            axis.axhline(0.8 * bandwidth, color="black", linestyle=":", linewidth=1,
                         label="target of issue 3")
        top = max([bandwidth or 0] + [v or 0 for r in decode_rows for v in r["gbps"].values()])
        axis.set_ylim(0, 1.4 * top)  # room for the legend above the bars
        s0 = decode_rows[0]["shape"]
        axis.set_title(f"decode: H={s0.heads}, D={s0.head_dim}, Lq=1")
        axis.set_ylabel("GB/s of K and V")
        axis.legend(fontsize=8, loc="upper center", ncol=2)
    figure.suptitle(f"Attention forward, float32, {threads} threads — {context['cpu']['model']}"
                    + (" (--quick smoke test)" if context["quick"] else ""))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads
    # Thread pools read these when the libraries load; threadpoolctl and torch.set_num_threads
    # below also set them at run time.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
    openblas_env = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.only == "variants":
        return main_variants(args, log)
    if args.only == "half":
        return main_half(args, log)
    if args.from_json:
        write_outputs(args.out, *load_run(args.from_json), log)
        return 0

    load_start = os.getloadavg()[0]
    if load_start > 1.3 and not args.quick:
        log(f"warning: load average {load_start:.2f}: other processes are running; the figures "
            "will be noisy")
    binary = find_bench_binary(args.bench_binary)
    if binary:
        log(f"machine limits from {binary}")
        limits = limits_from_bench(binary, threads, args.quick)
    else:
        log("forward_bench not found: machine limits from fallbacks")
        limits = limits_fallback(threads, args.quick)
    log(f"FMA peak {limits['peak_gflops']} GFLOP/s, read bandwidth {limits['bandwidth_gbps']} GB/s")

    peers = Peers(threads)
    shapes = grid(args.quick)
    results = [measure_shape(peers, shape, args, log) for shape in shapes]

    backward = measure_backward(peers, args.quick, log)
    if binary:
        variants = measure_variants(binary, args, log)
    else:
        variants = {"skipped": "forward_bench was not found (its variant rows make this section)"}

    memory_shape = (4096, 1, 64) if args.quick else (131072, 1, 64)
    log(f"memory probe L={memory_shape[0]} ...")
    memory = measure_memory(*memory_shape, threads)
    load_end = os.getloadavg()[0]

    prefill = [s for s in shapes if s.kind == "prefill"]
    decode = [s for s in shapes if s.kind == "decode"]
    context = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick, "threads": threads, "repeats": args.repeats,
        "sample_seconds": args.sample_seconds, "limits": limits, "cpu": cpu_description(),
        "blas": peers.blas, "openblas_env": " and ".join(openblas_env),
        "load": (load_start, load_end),
        "versions": {"sdpa": peers.sdpa.__version__, "numpy": peers.np.__version__,
                     "torch": peers.torch.__version__ if peers.torch else "not installed"},
        "sdpa_from": os.path.dirname(peers.sdpa.__file__), "commit": repo_commit(),
        "plan_prefill": engine_plan(peers, max(prefill, key=lambda s: (not s.causal, s.q_len,
                                                                        s.head_dim))),
        "plan_decode": engine_plan(peers, max(decode, key=lambda s: s.kv_len)) if decode else "",
        "backward": backward, "variants": variants,
    }
    if args.json:
        save_run(args.json, context, shapes, results, memory)
    write_outputs(args.out, context, shapes, results, memory, log)
    return 0


def main_variants(args, log):
    """--only variants: measure the variant rows (or take them from --from-json) and replace the
    Variants section of <out>/benchmarks.md, leaving the rest of it as it is."""
    if args.from_json:
        with open(args.from_json) as f:
            run = json.load(f)
        variants = run.get("variants") or run.get("context", {}).get("variants")
        if not variants:
            log(f"{args.from_json} holds no variant rows")
            return 1
    else:
        binary = find_bench_binary(args.bench_binary)
        if not binary:
            log("forward_bench not found: build it (cmake --build build-bench --target "
                "forward_bench) or give --bench-binary")
            return 1
        variants = measure_variants(binary, args, log)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"variants": variants}, f, indent=1)
    os.makedirs(args.out, exist_ok=True)
    report = os.path.join(args.out, "benchmarks.md")
    replace_variants_section(report, section_variants(variants))
    log(f"wrote the Variants section of {report}")
    return 0 if "rows" in variants else 1


def repo_commit():
    """The commit of this checkout, with "+changes" when src/ or include/ differ from it: the
    engine's commit when sdpa was installed from this checkout (pip install .), as documented;
    SDPA_BENCH_COMMIT overrides it when the imported sdpa was built elsewhere."""
    if os.environ.get("SDPA_BENCH_COMMIT"):
        return os.environ["SDPA_BENCH_COMMIT"]
    def git(*arguments):
        return subprocess.run(["git", "-C", REPO, *arguments], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src", "include")
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if dirty else "")) or None


def save_run(path, context, shapes, results, memory):
    """Everything the report is made from, so that --from-json can remake it."""
    cpu = dict(context["cpu"], flags=sorted(context["cpu"]["flags"]))
    with open(path, "w") as f:
        json.dump({"context": dict(context, cpu=cpu), "shapes": [vars(s) for s in shapes],
                   "results": results, "memory": memory}, f, indent=1)


def load_run(path):
    with open(path) as f:
        run = json.load(f)
    context = run["context"]
    context["cpu"]["flags"] = set(context["cpu"]["flags"])
    # JSON turns the integer keys (thread counts) into strings.
    for name in ("peak_gflops", "bandwidth_gbps"):
        context["limits"][name] = {int(k): v for k, v in context["limits"][name].items()}
    shapes = []
    for fields in run["shapes"]:
        shape = Shape(fields["kind"], fields["heads"], fields["q_len"], fields["kv_len"],
                      fields["head_dim"], fields["causal"], fields["kv_heads"], fields["batch"])
        shape.v_dim = fields["v_dim"]
        shapes.append(shape)
    return context, shapes, run["results"], run["memory"]


def write_outputs(out, context, shapes, results, memory, log):
    """benchmarks.md (keeping the hand-written notes of the one it replaces) and benchmarks.png."""
    os.makedirs(out, exist_ok=True)
    report = os.path.join(out, "benchmarks.md")
    context = dict(context, notes=read_notes(report),
                   previous_variants=read_between(report, VARIANTS_BEGIN, VARIANTS_END, True),
                   previous_half=read_between(report, HALF_BEGIN, HALF_END, True))
    rows, decode_rows = write_report(report, context, shapes, results, memory)
    problem = write_plot(os.path.join(out, "benchmarks.png"), rows, decode_rows, context)
    if problem:
        log(problem)
    log(f"wrote {report}")


if __name__ == "__main__":
    sys.exit(main())
