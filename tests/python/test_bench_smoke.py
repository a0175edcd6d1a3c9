"""bench/compare.py runs end to end in --quick mode (tiny shapes, two samples each: a few
seconds) and writes its report. It proves the script works, not how fast anything is."""

import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "compare.py")


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="bench/compare.py is not in this tree")
def test_compare_quick_writes_the_report(tmp_path):
    notes = "Hand-written notes survive a rerun."
    half = "<!-- half:begin -->\n## 16-bit: kept as it was\n<!-- half:end -->"  # --only half's
    (tmp_path / "benchmarks.md").write_text(
        f"old\n{half}\n<!-- notes:begin -->\n{notes}\n<!-- notes:end -->\n")
    result = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--threads", "2", "--bench-binary", "none",
         "--out", str(tmp_path), "--json", str(tmp_path / "raw.json")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    report = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## Machine", "## Targets", "## Prefill", "## Decode", "## Memory"):
        assert heading in report
    assert "--quick" in report  # marked as a smoke test, not a measurement
    assert notes in report and half in report
    assert "| 32 | no | 64 |" in report  # a prefill row: D, causal, L
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "benchmarks.png").stat().st_size > 0

    # --from-json remakes the same report without measuring anything.
    again = tmp_path / "again"
    again.mkdir()
    (again / "benchmarks.md").write_text(report)
    result = subprocess.run(
        [sys.executable, SCRIPT, "--from-json", str(tmp_path / "raw.json"), "--out", str(again)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (again / "benchmarks.md").read_text() == report


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="bench/compare.py is not in this tree")
def test_compare_only_half_rewrites_its_section(tmp_path):
    """--only half --quick (issue 13): sdpa and torch in float32, bfloat16 and float16 on two tiny
    shapes; it replaces the 16-bit section and nothing else, and --from-json remakes it."""
    pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    before = "# Benchmarks\n\n## Memory\n\nkept\n"
    (tmp_path / "benchmarks.md").write_text(before)
    command = [sys.executable, SCRIPT, "--only", "half", "--quick", "--threads", "2", "--out",
               str(tmp_path)]
    result = subprocess.run(command + ["--json", str(tmp_path / "half.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "benchmarks.md").read_text()
    assert report.startswith("# Benchmarks\n\n<!-- half:begin -->\n## 16-bit")
    assert report.endswith("<!-- half:end -->\n## Memory\n\nkept\n")
    assert "| B=1 H=2 D=32 L=128 causal |" in report and "torch bfloat16" in report
    assert "CPU: " in report and "bfloat16: `sdpa plan:" in report

    result = subprocess.run(command[:-2] + ["--out", str(tmp_path), "--from-json",
                                            str(tmp_path / "half.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "benchmarks.md").read_text() == report
