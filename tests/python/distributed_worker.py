"""Run by test_distributed.py under `mpirun -np P`: every rank builds the same random full
sequence, runs sdpa.distributed on its shard and compares its rows with the float64 numpy
reference on the full sequence. Exits non-zero (after printing the mismatch) on any failure."""

import pathlib
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sdpa.distributed as dist  # noqa: E402
from sdpa_reference import variant_attention, variant_backward  # noqa: E402

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
failures = []


def check(name, got, want, atol):
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    if not err <= atol:
        failures.append(f"rank {rank}: {name}: max error {err} > {atol}")


def case(name, algorithm, layout, is_causal, heads, kv_heads, seq, d=16, dv=8):
    rng = np.random.default_rng(7)
    q = rng.uniform(-1, 1, (2, heads, seq, d)).astype(np.float32)
    k = rng.uniform(-1, 1, (2, kv_heads, seq, d)).astype(np.float32)
    v = rng.uniform(-1, 1, (2, kv_heads, seq, dv)).astype(np.float32)
    dout = rng.uniform(-1, 1, (2, heads, seq, dv)).astype(np.float32)
    causal = "top_left" if is_causal else None
    out_ref, lse_ref = variant_attention(q, k, v, causal=causal)
    dq_ref, dk_ref, dv_ref, _ = variant_backward(dout, q, k, v, causal=causal)
    mine = [dist.shard(x, rank, world, layout) for x in (q, k, v, dout)]
    attention = dist.ring_attention if algorithm == "ring" else dist.ulysses_attention
    backward = (dist.ring_attention_backward if algorithm == "ring"
                else dist.ulysses_attention_backward)
    out, lse = attention(*mine[:3], layout=layout, is_causal=is_causal, return_lse=True)
    grads = backward(mine[3], *mine[:3], out, lse, layout=layout, is_causal=is_causal)
    tag = f"{name} ({algorithm}, {layout})"
    check(tag + " out", out, dist.shard(out_ref, rank, world, layout), 2e-6 * np.abs(v).max())
    check(tag + " lse", lse, dist.shard(lse_ref, rank, world, layout, axis=-1), 2e-5)
    for g, ref, what in zip(grads, (dq_ref, dk_ref, dv_ref), ("dq", "dk", "dv")):
        check(f"{tag} {what}", g, dist.shard(ref, rank, world, layout), 2e-5 * np.abs(ref).max())
    # the shards put back together are the full result
    full = dist.unshard(comm.allgather(out), layout)
    check(tag + " unshard", full, out_ref, 2e-6 * np.abs(v).max())
    return q, k, v, dout, dq_ref


case("causal GQA", "ring", "zigzag", True, 4, 2, 8 * world)
case("non-causal odd", "ring", "contiguous", False, 2, 1, 5 * world + 1)
case("causal", "ulysses", "contiguous", True, 2 * world, world, 6 * world + 1)

try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    q, k, v, dout, dq_ref = case("torch", "ring", "zigzag", True, 2, 2, 4 * world)
    tq, tk, tv = (torch.from_numpy(dist.shard(x, rank, world)).requires_grad_()
                  for x in (q, k, v))
    out = dist.ring_attention(tq, tk, tv, is_causal=True)
    out.backward(torch.from_numpy(dist.shard(dout, rank, world)))
    check("torch autograd dq", tq.grad.numpy(), dist.shard(dq_ref, rank, world),
          2e-5 * np.abs(dq_ref).max())

try:
    dist.ulysses_attention(*(np.zeros((1, world + 1, 2, 4), np.float32),) * 3)
    if world > 1:
        failures.append(f"rank {rank}: heads that do not divide were accepted")
except ValueError as e:
    if world == 1 or "multiples of the number of ranks" not in str(e):
        failures.append(f"rank {rank}: unexpected error: {e}")

for f in failures:
    print(f, flush=True)
print(f"rank {rank}: {'FAILED' if failures else 'ok'}", flush=True)
sys.exit(1 if comm.allreduce(len(failures)) else 0)
