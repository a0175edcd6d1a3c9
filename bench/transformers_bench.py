#!/usr/bin/env python3
"""A Llama-style transformers model with each attention implementation: prefill and decode.

    python bench/transformers_bench.py [--lengths 1024,4096,8192] [--context 4096]
                                       [--dtype float32] [--update docs/benchmarks.md]

The model is random-init LlamaForCausalLM from a config (nothing is downloaded): 4 layers, hidden
1024, 16 heads of 64, 4 KV heads (GQA 4:1), MLP 2816, vocabulary 32000. For each attention
implementation ("sdpa_cpu" = sdpa.transformers, "sdpa" = transformers' torch SDPA, "eager"):

  prefill  one forward of B=1 × L tokens (logits of the last token only, as generate() does),
  padded   one attention call of a prefill of B = 2 × L tokens, row 1 left-padded (--padded),
  decode   the time of one new token at a context of --context tokens, from a prefilled
           DynamicCache (copied for every sample so each sample starts at the same length);
           reported as tokens/s.

Each figure is reported twice: end to end (the model's forward) and attention only (the time
spent inside the attention function transformers calls, summed over the layers: for "sdpa_cpu"
that includes its argument checks, the mask band and the output transpose, as for the others
their repeat_kv, masks and transposes). Implementations take turns within each shape, in a
rotating order, and every figure is the median of the samples, so load from other processes
hits all of them alike. Eager materialises the (16, L, L) float32 scores (4 GiB per layer at
L = 8192, several copies in flight): it is skipped above --eager-max (4096).

--update FILE replaces the text between <!-- transformers:begin --> and <!-- transformers:end -->
in FILE (docs/benchmarks.md keeps it inside its hand-written notes, which bench/compare.py
preserves) with this run's report; without it the report is printed.
"""

import argparse
import copy
import datetime
import inspect
import os
import platform
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import sdpa  # noqa: E402
import sdpa.transformers  # noqa: E402

IMPLS = ("sdpa_cpu", "sdpa", "eager")
BEGIN, END = "<!-- transformers:begin -->", "<!-- transformers:end -->"


class AttentionClock:
    """Wraps the attention function of each implementation to sum the seconds spent in it, and
    keeps the arguments of the first call after capture() (layer 0's)."""

    def __init__(self):
        self.seconds = 0.0
        self.captured = None
        self.capturing = False
        self.functions = {}
        for name in ("sdpa_cpu", "sdpa"):  # the registry the models read (one object)
            self.functions[name] = ALL_ATTENTION_FUNCTIONS[name]
            ALL_ATTENTION_FUNCTIONS[name] = self._timed(ALL_ATTENTION_FUNCTIONS[name])
        # Eager is the default transformers passes to get_interface, looked up in the module.
        self.functions["eager"] = modeling_llama.eager_attention_forward
        modeling_llama.eager_attention_forward = self._timed(
            modeling_llama.eager_attention_forward)

    def _timed(self, function):
        def timed(*args, **kwargs):
            if self.capturing:
                self.captured, self.capturing = (args, kwargs), False
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed

    def capture(self, run):
        """The (args, kwargs) of the first attention call of run()."""
        self.capturing, self.captured = True, None
        run()
        return self.captured

    def measure(self, run):
        """(total seconds, attention seconds) of run()."""
        self.seconds = 0.0
        start = time.perf_counter()
        run()
        return time.perf_counter() - start, self.seconds


def make_model(dtype):
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
                         max_position_embeddings=16384)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa_cpu")
    return model.to(dtype).eval()


def prefill(model, ids, cache=None):
    """One forward of `ids` (1, L), extending `cache` if given; logits of the last token only."""
    # transformers 5 renames past_key_values to cache (the old name warns until 5.40).
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(input_ids=ids, use_cache=cache is not None, logits_to_keep=1, **{name: cache})


def isolated_calls(clock, call, impls, samples, repeats):
    """Median seconds of one attention call per implementation, on the arguments layer 0 got
    from "sdpa_cpu" (the same as "sdpa" gets; eager gets transformers' additive mask instead of
    None + is_causal, as in the model). Implementations take turns; each sample is the median
    of `repeats` calls."""
    (module, query, key, value, mask), kwargs = call[0][:5], dict(call[1])
    causal = kwargs.pop("is_causal", None)
    causal = module.is_causal if causal is None else causal
    eager_mask = sdpa.transformers._additive_mask(mask, query, key, causal)
    times = {i: [] for i in impls}
    for rep in range(samples):
        for impl in impls[rep % len(impls):] + impls[:rep % len(impls)]:
            m = eager_mask if impl == "eager" else mask
            calls = []
            for _ in range(repeats):
                start = time.perf_counter()
                clock.functions[impl](module, query, key, value, m, **kwargs)
                calls.append(time.perf_counter() - start)
            times[impl].append(statistics.median(calls))
    return {i: statistics.median(t) for i, t in times.items()}


def median_pair(samples):
    return (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    flags = fields.get("Flags", "").split()
    simd = ", ".join(f for f in ("avx512f", "avx512_bf16", "avx2") if f in flags)
    return f"{name} (family {fields.get('CPU family', '?').strip()}, model " \
           f"{fields.get('Model', '?').strip()}), {fields.get('CPU(s)', '?').strip()} CPUs; {simd}"


def run(args, log):
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    sdpa.set_num_threads(args.threads)
    clock = AttentionClock()
    model = make_model(dtype)
    g = torch.Generator().manual_seed(0)
    results = {"prefill": {}, "decode": {}, "prefill_call": {}, "padded_call": {},
               "decode_call": {}}
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        for length in args.lengths:
            ids = torch.randint(0, 32000, (1, length), generator=g)
            impls = [i for i in IMPLS if i != "eager" or length <= args.eager_max]
            samples = {i: [] for i in impls}
            for impl in impls:  # warm-up, one each
                model.set_attn_implementation(impl)
                prefill(model, ids[:, :min(length, 256)])
            reps = args.samples if length <= 4096 else max(3, args.samples // 2)
            for rep in range(reps):
                for impl in impls[rep % len(impls):] + impls[:rep % len(impls)]:
                    model.set_attn_implementation(impl)
                    samples[impl].append(clock.measure(lambda: prefill(model, ids)))
                    log(f"prefill L={length} {impl}: {samples[impl][-1][0]:.3f} s "
                        f"(attention {samples[impl][-1][1]:.3f} s)")
            results["prefill"][length] = {i: median_pair(s) for i, s in samples.items()}
            model.set_attn_implementation("sdpa_cpu")
            call = clock.capture(lambda: prefill(model, ids))
            results["prefill_call"][length] = isolated_calls(
                clock, call, impls, args.call_samples, 1)
            log(f"prefill L={length} one call: {results['prefill_call'][length]}")

        # A padded batch (one call alone): B = 2, row 1 left-padded by a quarter. "sdpa" then
        # gets transformers' 4-D bool mask, "sdpa_cpu" the same mask and its band.
        for length in args.padded:
            ids = torch.randint(0, 32000, (2, length), generator=g)
            mask = torch.ones(2, length, dtype=torch.long)
            mask[1, :length // 4] = 0
            model.set_attn_implementation("sdpa_cpu")
            call = clock.capture(lambda: model(input_ids=ids, attention_mask=mask,
                                               logits_to_keep=1))
            results["padded_call"][length] = isolated_calls(
                clock, call, ["sdpa_cpu", "sdpa"], args.call_samples, 1)
            log(f"padded prefill L={length} one call: {results['padded_call'][length]}")

        # Decode: one prefilled cache, copied for every sample.
        context = args.context
        ids = torch.randint(0, 32000, (1, context), generator=g)
        model.set_attn_implementation("sdpa_cpu")
        cache = transformers.DynamicCache(config=model.config)
        out = prefill(model, ids, cache)
        token = out.logits[:, -1:].argmax(-1)
        samples = {i: [] for i in IMPLS}
        for rep in range(args.samples):
            for impl in IMPLS[rep % 3:] + IMPLS[:rep % 3]:
                model.set_attn_implementation(impl)
                sample_cache = copy.deepcopy(cache)
                prefill(model, token, sample_cache)  # warm-up step on this copy
                steps = []
                for _ in range(args.steps):
                    steps.append(clock.measure(lambda: prefill(model, token, sample_cache)))
                samples[impl].append(median_pair(steps))
                log(f"decode context={context} {impl}: {samples[impl][-1][0] * 1e3:.2f} ms/token "
                    f"(attention {samples[impl][-1][1] * 1e3:.2f} ms)")
        results["decode"][context] = {i: median_pair(s) for i, s in samples.items()}
        model.set_attn_implementation("sdpa_cpu")
        call = clock.capture(lambda: prefill(model, token, copy.deepcopy(cache)))
        results["decode_call"][context] = isolated_calls(
            clock, call, list(IMPLS), args.call_samples, 20)
        log(f"decode context={context} one call: {results['decode_call'][context]}")
    load.append(os.getloadavg()[0])
    counts = sdpa.transformers.call_counts()
    return results, load, counts


def report(args, results, load, counts):
    prefill, decode = results["prefill"], results["decode"]
    lines = [
        f"Measured by `bench/transformers_bench.py` on {datetime.date.today()}: random-init "
        "LlamaForCausalLM, 4 layers, hidden 1024, 16 heads of 64, 4 KV heads, MLP 2816, "
        f"vocabulary 32000, {args.dtype}, B = 1, {args.threads} threads for torch and sdpa; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, sdpa "
        f"{sdpa.__version__}. CPU: {cpu_model()}. Load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after. Medians of samples taken in turns; attention = time inside the "
        "attention function, summed over the 4 layers.",
        "",
        "| prefill L | sdpa_cpu total s | sdpa total s | eager total s | sdpa_cpu attention s "
        "| sdpa attention s | eager attention s | attention: sdpa / sdpa_cpu | total: sdpa / "
        "sdpa_cpu |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row, impl, k):
        return f"{row[impl][k]:.3f}" if impl in row else "–"

    for length, row in prefill.items():
        lines.append(
            f"| {length} | {cell(row, 'sdpa_cpu', 0)} | {cell(row, 'sdpa', 0)} | "
            f"{cell(row, 'eager', 0)} | {cell(row, 'sdpa_cpu', 1)} | {cell(row, 'sdpa', 1)} | "
            f"{cell(row, 'eager', 1)} | {row['sdpa'][1] / row['sdpa_cpu'][1]:.2f}× | "
            f"{row['sdpa'][0] / row['sdpa_cpu'][0]:.2f}× |")
    lines += ["", "| decode context | impl | tokens/s | ms/token | attention ms/token | "
              "attention: sdpa / this |", "|---|---|---|---|---|---|"]
    for context, row in decode.items():
        for impl in IMPLS:
            total, attention = row[impl]
            lines.append(f"| {context} | {impl} | {1 / total:.1f} | {total * 1e3:.2f} | "
                         f"{attention * 1e3:.2f} | {row['sdpa'][1] / attention:.2f}× |")
    lines += ["", "One attention call alone (layer 0's arguments, called directly; "
              f"{args.call_samples} samples in turns, decode samples the median of 20 calls), "
              "ms:", "", "| call | sdpa_cpu | sdpa | eager | sdpa / sdpa_cpu |",
              "|---|---|---|---|---|"]
    calls = [(f"prefill L={n}", row) for n, row in results["prefill_call"].items()]
    calls += [(f"prefill L={n}, B=2, row 1 left-padded by {n // 4}", row)
              for n, row in results["padded_call"].items()]
    calls += [(f"decode context={n}", row) for n, row in results["decode_call"].items()]
    for name, row in calls:
        eager = f"{row['eager'] * 1e3:.2f}" if "eager" in row else "–"
        lines.append(f"| {name} | {row['sdpa_cpu'] * 1e3:.2f} | {row['sdpa'] * 1e3:.2f} | "
                     f"{eager} | {row['sdpa'] / row['sdpa_cpu']:.2f}× |")
    fallbacks = counts["fallback"]
    lines += ["", f"sdpa.transformers.call_counts() after the run: {counts['sdpa']} calls "
              f"through sdpa, {fallbacks} fallbacks" + (f" ({counts})" if fallbacks else "") + "."]
    return "\n".join(lines)


def update(path, text):
    with open(path) as f:
        doc = f.read()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        sys.exit(f"{path} has no {BEGIN} ... {END} block to replace")
    with open(path, "w") as f:
        f.write(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,4096,8192",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--padded", default="4096", type=lambda s: [int(x) for x in s.split(",")],
                        help="lengths of the padded-batch prefill (one call alone)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per sample")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--call-samples", type=int, default=9,
                        help="samples of the isolated attention calls")
    parser.add_argument("--eager-max", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--update", metavar="FILE")
    args = parser.parse_args()

    def log(message):
        print(message, file=sys.stderr, flush=True)

    results, load, counts = run(args, log)
    text = report(args, results, load, counts)
    if args.update:
        update(args.update, text)
        log(f"updated {args.update}")
    else:
        print(text)


if __name__ == "__main__":
    main()
