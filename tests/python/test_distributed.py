"""sdpa.distributed (issue 17): launches `mpirun -np P python distributed_worker.py`, whose ranks
each compare their shard of ring and Ulysses attention (forward, backward, and the torch autograd
Function when torch is installed) with the float64 numpy reference on the full sequence. Skipped
without mpi4py, mpirun or an sdpa built with MPI."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import sdpa.distributed

HERE = pathlib.Path(__file__).resolve().parent
MPIRUN = shutil.which("mpirun")

pytestmark = [
    pytest.mark.skipif(not sdpa.distributed.available(),
                       reason="sdpa built without MPI, or mpi4py not installed"),
    pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (scripts/setup.sh installs it)"),
]


def _flags():
    version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version:  # root, more ranks than cores, shared memory only
        return ["--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader"]
    return []


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_rank_matches_the_full_sequence_reference(ranks):
    env = dict(os.environ, SDPA_NUM_THREADS="1")
    result = subprocess.run(
        [MPIRUN, "-np", str(ranks), *_flags(), sys.executable, str(HERE / "distributed_worker.py")],
        capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == ranks, result.stdout


def test_without_a_build_with_mpi_the_error_says_so(monkeypatch):
    monkeypatch.setattr(sdpa.distributed, "_sdpa_mpi", None)
    assert not sdpa.distributed.available()
    with pytest.raises(RuntimeError, match="built without MPI"):
        sdpa.distributed.ring_attention([[1.0]], [[1.0]], [[1.0]])
