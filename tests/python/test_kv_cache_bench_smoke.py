"""bench/kv_cache_bench.py runs end to end on a tiny shape and rewrites its block of a report:
it proves the script works and that its peers compute what sdpa computes, not how fast anything
is."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "kv_cache_bench.py")


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="bench/kv_cache_bench.py is not here")
def test_kv_cache_bench_writes_its_block(tmp_path):
    report = tmp_path / "benchmarks.md"
    report.write_text("before\n<!-- kvcache:begin -->\nold\n<!-- kvcache:end -->\nafter\n")
    result = subprocess.run(
        [sys.executable, SCRIPT, "--batch", "2", "--context", "64", "--q-len", "1,4",
         "--samples", "1", "--update", str(report)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    rows = re.findall(r"^\| 2 \| 64 \| (\d) \| (float32|int8) \| (contiguous|paged 16) \|.*$",
                      text, flags=re.M)
    assert len(rows) == 8, text
    # The peers' results agree with sdpa's (float32, 64 keys): the last column.
    diffs = re.findall(r"\| ([0-9.e+-]+) \|$", text, flags=re.M)
    assert len(diffs) >= 2, text  # numpy on both paged float32 rows, torch on the contiguous
    assert all(float(diff) < 1e-5 for diff in diffs), text
