#!/usr/bin/env python3
"""Finds the innermost loops of the engine's compiled kernels and runs llvm-mca on them.

The static analysis behind docs/performance.md, for CPUs this machine is not: it disassembles an
object file (objdump), picks the functions of one Highway target (N_AVX3 = AVX-512 by default)
whose names match --function, finds their innermost loops (a backward branch with no other
backward branch inside), and prints, for each loop with at least --min-vector vector
instructions, its instruction mix and llvm-mca's throughput per iteration on each --mcpu.

    python3 bench/mca_loops.py build/src/CMakeFiles/sdpa.dir/cpu/forward.cc.o \
        --function 'ForwardTask<float, float>::Tile' --mcpu sapphirerapids,icelake-server,znver4

--dump N writes loop N as llvm-mca input to stdout instead (to run llvm-mca by hand, e.g. with
-timeline or -bottleneck-analysis). llvm-mca-14 has no znver4 model; the script uses the newest
llvm-mca it finds (--mca to choose).
"""

import argparse
import collections
import re
import shutil
import subprocess
import sys

LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")
FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
BRANCH = re.compile(r"^(j[a-z]+)\s+([0-9a-f]+)\b")


def functions(disassembly, target, pattern):
    """Yields (name, [(address, instruction)]) for functions of `target` matching `pattern`."""
    name, body = None, []
    for line in disassembly.splitlines():
        m = FUNC.match(line)
        if m:
            if name is not None:
                yield name, body
            name = m.group(1) if (target in m.group(1) and re.search(pattern, m.group(1))) else None
            body = []
            continue
        m = LINE.match(line)
        if name is not None and m:
            text = re.sub(r"\s+#.*$", "", m.group(2)).strip()
            text = re.sub(r"\s+<[^>]*>$", "", text)
            body.append((int(m.group(1), 16), text))
    if name is not None:
        yield name, body


def innermost_loops(body):
    """[(start, end)] index ranges of loops with no backward branch strictly inside."""
    index = {address: i for i, (address, _) in enumerate(body)}
    loops = []
    for i, (address, text) in enumerate(body):
        m = BRANCH.match(text)
        if not m:
            continue
        target = int(m.group(2), 16)
        if target <= address and target in index:
            loops.append((index[target], i))
    return [
        (s, e)
        for s, e in loops
        if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in loops)
    ]


def mix(instructions):
    counts = collections.Counter()
    for text in instructions:
        op = text.split()[0]
        vector = "zmm" in text or "ymm" in text or "xmm" in text
        if op.startswith("vfmadd") or op.startswith("vfnmadd") or op.startswith("vfmsub"):
            counts["fma"] += 1
        elif vector and "(" in text and op.startswith(("vmov", "vbroadcast")):
            counts["vload/store"] += 1
        elif vector:
            counts["other vector"] += 1
        else:
            counts["scalar"] += 1
    return counts


def mca_input(instructions):
    # The closing branch becomes a jump to a label, so llvm-mca sees one loop iteration.
    lines = ["loop:"]
    for text in instructions[:-1]:
        lines.append("  " + text)
    lines.append("  " + instructions[-1].split()[0] + " loop")
    return "\n".join(lines) + "\n"


def run_mca(mca, mcpu, source):
    out = subprocess.run(
        [mca, "-mtriple=x86_64", "-mcpu=" + mcpu, "-iterations=200", "-bottleneck-analysis"],
        input=source,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[0] if out.stderr else "failed"}
    result = {}
    for key, label in (("cycles", "Total Cycles:"), ("rthroughput", "Block RThroughput:")):
        m = re.search(re.escape(label) + r"\s+([0-9.]+)", out.stdout)
        if m:
            result[key] = float(m.group(1))
    m = re.search(r"Resource Pressure per Iteration:\n(.*)\n(.*)\n", out.stdout)
    if m:
        names = re.findall(r"\[[0-9.]+\]", m.group(1))
        values = m.group(2).split()
        legend = dict(re.findall(r"^\[([0-9.]+)\]\s+-\s+(\S+)", out.stdout, re.M))
        pressure = sorted(
            ((float(v), legend.get(n.strip("[]"), n)) for n, v in zip(names, values) if v != "-"),
            reverse=True,
        )
        result["busiest"] = ", ".join(f"{name} {value:.1f}" for value, name in pressure[:3])
    m = re.search(r"Cycles with backend pressure increase \[ ([0-9.]+)% \]", out.stdout)
    result["backend_pressure"] = m.group(1) + "%" if m else "0%"
    m = re.search(r"Data Dependencies:\s+\[ ([0-9.]+)% \]", out.stdout)
    if m:
        result["dependencies"] = m.group(1) + "%"
    m = re.search(r"Resource Pressure\s+\[ ([0-9.]+)% \]", out.stdout)
    if m:
        result["resources"] = m.group(1) + "%"
    result["cycles_per_iteration"] = result.get("cycles", 0) / 200
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("object")
    parser.add_argument("--function", default=".", help="regex on the demangled name")
    parser.add_argument("--target", default="N_AVX3", help="Highway target namespace")
    parser.add_argument("--mcpu", default="sapphirerapids,icelake-server,znver4")
    parser.add_argument("--min-vector", type=int, default=8)
    parser.add_argument("--dump", type=int, help="print loop N as llvm-mca input")
    parser.add_argument("--mca", default=None, help="llvm-mca binary")
    args = parser.parse_args()
    mca = args.mca or next(
        (b for b in ("llvm-mca-19", "llvm-mca-18", "llvm-mca-17", "llvm-mca-16", "llvm-mca")
         if shutil.which(b)),
        None,
    )
    disassembly = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", args.object],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    number = 0
    for name, body in functions(disassembly, args.target, args.function):
        for start, end in innermost_loops(body):
            instructions = [text for _, text in body[start : end + 1]]
            counts = mix(instructions)
            if counts["fma"] + counts["other vector"] + counts["vload/store"] < args.min_vector:
                continue
            if args.dump is not None:
                if number == args.dump:
                    sys.stdout.write(mca_input(instructions))
                    return
                number += 1
                continue
            spills = sum(1 for t in instructions if "(%rsp)" in t or "(%rbp)" in t)
            print(f"loop {number}: {name[:110]}")
            print(f"  at +{body[start][0] - body[0][0]:#x}, {len(instructions)} instructions: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + f"; stack operands {spills}")
            for mcpu in args.mcpu.split(","):
                r = run_mca(mca, mcpu, mca_input(instructions))
                if "error" in r:
                    print(f"  {mcpu:16s} {r['error']}")
                    continue
                print(f"  {mcpu:16s} {r['cycles_per_iteration']:6.2f} cycles/iter "
                      f"(resource bound {r.get('rthroughput', 0):.2f}); busiest: "
                      f"{r.get('busiest', '?')}; backend pressure {r['backend_pressure']}"
                      + (f" (dependencies {r['dependencies']}, resources {r['resources']})"
                         if "dependencies" in r else ""))
            number += 1


if __name__ == "__main__":
    main()
