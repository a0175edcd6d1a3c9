"""End-to-end tests of the `sdpa` command: they run the real binary on .npy files.

The binary is $SDPA_CLI (CI sets it to build/tools/sdpa), else `sdpa` on PATH; without either the
tests are skipped. Results are compared with a float64 numpy reference as
|x - ref| <= atol + rtol·|ref|. Every error case checks the exit code, that stderr is one line
starting "sdpa: " with the expected message, and that no output file (not even a temporary one)
is left behind. No timing assertions.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from numpy.lib import format as npy_format

CLI = os.environ.get("SDPA_CLI") or shutil.which("sdpa")
if CLI and os.sep in CLI:
    CLI = os.path.abspath(CLI)  # some tests run it from another directory
pytestmark = pytest.mark.skipif(
    not CLI, reason="the sdpa binary was not found: set SDPA_CLI=path/to/build/tools/sdpa or put "
    "sdpa on PATH")

SEED_OUT = np.array([[1.660477, 2.660477], [2.339523, 3.339523]])


def run(*args, cwd=None, timeout=120):
    return subprocess.run([CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def reference(q, k, v, mask=None, causal=None, scale=None):
    """softmax(scale·QKᵀ + mask)·V and the row LSE in float64, for rank 2-4 inputs with GQA."""
    rank = q.ndim
    q, k, v = (np.asarray(x, np.float64).reshape((1,) * (4 - x.ndim) + x.shape) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    lq, lkv = q.shape[2], k.shape[2]
    s = (q @ k.swapaxes(-1, -2)) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    visible = np.ones((lq, lkv), bool)
    if causal is not None:
        shift = 0 if causal == "top-left" else lkv - lq
        visible = np.arange(lkv)[None, :] <= np.arange(lq)[:, None] + shift
    if mask is not None and mask.dtype == bool:
        visible = visible & mask
    elif mask is not None:
        s = s + mask.astype(np.float64)
    s = np.where(visible, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m_safe)
    l = p.sum(-1, keepdims=True)
    out = np.where(l > 0, (p / np.where(l > 0, l, 1)) @ v, 0)
    with np.errstate(divide="ignore"):
        lse = (np.log(l) + m_safe)[..., 0]
    out_shape = out.shape[4 - rank:]
    return out.reshape(out_shape), lse.reshape(out_shape[:-1])


def assert_close(actual, expected, dtype):
    atol, rtol = (2e-5 * max(1.0, np.abs(expected).max(initial=0)), 1e-5) if dtype == np.float32 \
        else (1e-12, 1e-12)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(actual), finite)
    assert np.array_equal(actual[~finite], expected[~finite])
    error = np.abs(actual[finite] - expected[finite]) - (atol + rtol * np.abs(expected[finite]))
    assert error.max(initial=-1) <= 0, f"max excess error {error.max()}"


def no_outputs_left(directory):
    """True when the directory holds only the inputs (no output, no temporary file)."""
    return all(name.startswith("in_") for name in os.listdir(directory))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def save(directory, name, array, version=None):
    path = os.path.join(directory, name)
    if version is None:
        np.save(path, array)
    else:
        with open(path, "wb") as f:
            npy_format.write_array(f, array, version=version)
    return path


# ---------------------------------------------------------------------------- round trips

CASES = [
    # name, q shape, k shape, v shape, dtype, options
    ("2d_f32", (7, 16), (9, 16), (9, 16), np.float32, {}),
    ("2d_f64_seed_like", (2, 2), (2, 2), (2, 2), np.float64, {}),
    ("3d_f32_causal_tl", (3, 17, 8), (3, 17, 8), (3, 17, 5), np.float32, {"causal": "top-left"}),
    ("4d_f64_causal_br", (2, 2, 5, 8), (2, 2, 11, 8), (2, 2, 11, 8), np.float64,
     {"causal": "bottom-right"}),
    ("4d_f32_gqa", (1, 4, 6, 32), (1, 2, 10, 32), (1, 2, 10, 32), np.float32, {}),
    ("4d_f32_scale", (1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), np.float32, {"scale": 0.3}),
    ("f64_lq_gt_lkv_tl", (1, 1, 9, 4), (1, 1, 3, 4), (1, 1, 3, 4), np.float64,
     {"causal": "top-left"}),
]


@pytest.mark.parametrize("name,qs,ks,vs,dtype,opts", CASES, ids=[c[0] for c in CASES])
def test_run_matches_numpy(tmp_path, rng, name, qs, ks, vs, dtype, opts):
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in (qs, ks, vs))
    args = ["run", "--query", save(tmp_path, "q.npy", q), "--key", save(tmp_path, "k.npy", k),
            "--value", save(tmp_path, "v.npy", v), "--out", tmp_path / "out.npy",
            "--lse", tmp_path / "lse.npy"]
    if "causal" in opts:
        args += ["--causal", opts["causal"]]
    if "scale" in opts:
        args += ["--scale", opts["scale"]]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out, lse = np.load(tmp_path / "out.npy"), np.load(tmp_path / "lse.npy")
    expected_out, expected_lse = reference(q, k, v, causal=opts.get("causal"),
                                           scale=opts.get("scale"))
    assert out.dtype == dtype and lse.dtype == dtype
    assert out.shape == expected_out.shape and lse.shape == expected_lse.shape
    assert out.flags.c_contiguous
    assert_close(out, expected_out, dtype)
    assert_close(lse, expected_lse, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fortran_order_and_header_versions(tmp_path, rng, dtype):
    q = np.asfortranarray(rng.standard_normal((2, 6, 8)).astype(dtype))
    k = rng.standard_normal((2, 7, 8)).astype(dtype)
    v = np.asfortranarray(rng.standard_normal((2, 7, 3)).astype(dtype))
    result = run("run", "--query", save(tmp_path, "q.npy", q),
                 "--key", save(tmp_path, "k.npy", k, version=(2, 0)),
                 "--value", save(tmp_path, "v.npy", v, version=(3, 0)), "--out", tmp_path / "o.npy")
    assert result.returncode == 0, result.stderr
    assert_close(np.load(tmp_path / "o.npy"), reference(q, k, v)[0], dtype)


def test_bool_mask_with_fully_masked_row(tmp_path, rng):
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    mask = rng.random((4, 4)) < 0.6
    mask[2, :] = False  # row 2 sees nothing: out = 0, lse = -inf
    result = run("run", "--query", save(tmp_path, "q.npy", q), "--key", save(tmp_path, "k.npy", k),
                 "--value", save(tmp_path, "v.npy", v), "--mask", save(tmp_path, "m.npy", mask),
                 "--out", tmp_path / "o.npy", "--lse", tmp_path / "l.npy")
    assert result.returncode == 0, result.stderr
    out, lse = np.load(tmp_path / "o.npy"), np.load(tmp_path / "l.npy")
    expected_out, expected_lse = reference(q, k, v, mask=mask)
    assert_close(out, expected_out, np.float32)
    assert_close(lse, expected_lse, np.float32)
    assert np.all(out[:, :, 2] == 0) and np.all(lse[:, :, 2] == -np.inf)


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float64])
def test_float_mask_broadcast_and_converted(tmp_path, rng, mask_dtype):
    """A float mask broadcasts like numpy; one of the other float type is converted."""
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    mask = rng.standard_normal((1, 3, 1, 5)).astype(mask_dtype)
    mask[0, 1, 0, 3] = -np.inf
    result = run("run", "--query", save(tmp_path, "q.npy", q), "--key", save(tmp_path, "k.npy", k),
                 "--value", save(tmp_path, "v.npy", v), "--mask", save(tmp_path, "m.npy", mask),
                 "--causal", "top-left", "--threads", "1", "--out", tmp_path / "o.npy")
    assert result.returncode == 0, result.stderr
    assert_close(np.load(tmp_path / "o.npy"), reference(q, k, v, mask, "top-left")[0], np.float32)


def test_reference_backend_and_verbose(tmp_path, rng):
    q = rng.standard_normal((3, 4)).astype(np.float64)
    path = save(tmp_path, "q.npy", q)
    result = run("run", "--query", path, "--key", path, "--value", path, "--backend", "reference",
                 "--verbose", "--out", tmp_path / "o.npy")
    assert result.returncode == 0, result.stderr
    assert "backend=reference" in result.stderr
    assert_close(np.load(tmp_path / "o.npy"), reference(q, q, q)[0], np.float64)


def test_output_may_overwrite_an_input(tmp_path, rng):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    path = save(tmp_path, "q.npy", q)
    result = run("run", "--query", path, "--key", path, "--value", path, "--out", path)
    assert result.returncode == 0, result.stderr
    assert_close(np.load(path), reference(q, q, q)[0], np.float32)


def test_seed_example_through_files(tmp_path):
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[1.0, 2.0], [3.0, 4.0]])
    result = run("run", "--query", save(tmp_path, "q.npy", q), "--key", tmp_path / "q.npy",
                 "--value", save(tmp_path, "v.npy", v), "--out", tmp_path / "o.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), SEED_OUT, atol=5e-7)


# ---------------------------------------------------------------------------- errors

def raw_npy(header, data=b""):
    """A .npy file with an arbitrary header text, padded like numpy pads it."""
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


GOOD = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def npy_bytes(array):
    path_free = __import__("io").BytesIO()
    np.save(path_free, array)
    return path_free.getvalue()


# name, what replaces the query file (bytes, or an array), expected message regex
BAD_QUERY_FILES = [
    ("empty_file", b"", r"--query \S+: not a \.npy file"),
    ("text_file", b"hello\n", r"not a \.npy file"),
    ("wrong_magic", b"\x93NUMPX" + npy_bytes(GOOD)[6:], r"not a \.npy file"),
    ("truncated_header", npy_bytes(GOOD)[:30], r"truncated"),
    ("truncated_data", npy_bytes(GOOD)[:-4], r"data is truncated: .*48 bytes, but only 44"),
    ("int32", np.arange(12, dtype=np.int32).reshape(3, 4), r"unsupported dtype '<i4'"),
    ("big_endian", GOOD.astype(">f4"), r"unsupported dtype '>f4': byte order"),
    ("complex", GOOD.astype(np.complex64), r"unsupported dtype '<c8'"),
    ("float16", GOOD.astype(np.float16), r"unsupported dtype '<f2'"),
    ("structured", np.zeros(3, dtype=[("a", "<f4")]), r"structured"),
    ("absurd_shape", raw_npy("{'descr': '<f4', 'fortran_order': False, "
                             "'shape': (100000000000, 100000000), }", b"\0" * 16),
     r"data is truncated: .* 40000000000000000000 bytes|too many elements"),
    ("overflowing_shape", raw_npy("{'descr': '<f8', 'fortran_order': False, "
                                  "'shape': (4294967296, 4294967296), }"), r"too many elements"),
    ("negative_shape", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, -4), }"),
     r"negative size -4"),
    ("header_not_dict", raw_npy("[1, 2, 3]"), r"not a dict"),
    ("header_garbage", raw_npy("{'descr': <f4}"), r"malformed header"),
    ("bool_query", GOOD > 0.5, r"--query \S+: dtype is bool"),
    ("rank_1", GOOD.ravel(), r"--query \S+: rank is 1"),
    ("rank_5", GOOD.reshape(1, 1, 1, 3, 4), r"rank 5 but at most 4"),
]


@pytest.mark.parametrize("name,content,message", BAD_QUERY_FILES,
                         ids=[c[0] for c in BAD_QUERY_FILES])
def test_malformed_query_file(tmp_path, name, content, message):
    query = tmp_path / "in_q.npy"
    if isinstance(content, bytes):
        query.write_bytes(content)
    else:
        np.save(query, content)
    key = save(tmp_path, "in_k.npy", GOOD)
    assert_fails(tmp_path, ["run", "--query", query, "--key", key, "--value", key], message)


def assert_fails(tmp_path, args, message, code=1, outputs=("out.npy", "lse.npy")):
    """Runs with --out (and --lse) in tmp_path; checks the failure and that nothing was written."""
    extra = []
    if "--out" not in args:
        extra += ["--out", tmp_path / outputs[0]]
    if args and args[0] == "run" and "--lse" not in args:
        extra += ["--lse", tmp_path / outputs[1]]
    result = run(*args, *(extra if args and args[0] == "run" else []))
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sdpa: "), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert no_outputs_left(tmp_path), os.listdir(tmp_path)
    return lines[0]


@pytest.fixture
def inputs(tmp_path, rng):
    """Valid query/key/value files, named in_*, for the error tests to break one thing at a time."""
    paths = {}
    for name, shape in (("q", (2, 5, 8)), ("k", (2, 6, 8)), ("v", (2, 6, 4))):
        paths[name] = save(tmp_path, f"in_{name}.npy", rng.standard_normal(shape).astype("f4"))
    return paths


def qkv(paths, **replace):
    chosen = {**paths, **replace}
    return ["--query", chosen["q"], "--key", chosen["k"], "--value", chosen["v"]]


def test_missing_file(tmp_path, inputs):
    assert_fails(tmp_path, ["run", *qkv(inputs, k=tmp_path / "in_nothere.npy")],
                 r"^sdpa: --key \S+in_nothere\.npy: cannot open: No such file or directory$")


def test_directory_as_input(tmp_path, inputs):
    (tmp_path / "in_dir").mkdir()
    assert_fails(tmp_path, ["run", *qkv(inputs, v=tmp_path / "in_dir")], r"--value \S+: is a "
                 r"directory")


def test_shape_mismatch_names_the_argument(tmp_path, rng, inputs):
    bad = save(tmp_path, "in_k2.npy", rng.standard_normal((2, 6, 7)).astype("f4"))
    assert_fails(tmp_path, ["run", *qkv(inputs, k=bad)],
                 r"^sdpa: key\.shape\[2\] \(head_dim\) is 7 but query\.shape\[2\] is 8$")


def test_dtype_mismatch(tmp_path, rng, inputs):
    bad = save(tmp_path, "in_v2.npy", rng.standard_normal((2, 6, 4)))
    assert_fails(tmp_path, ["run", *qkv(inputs, v=bad)], r"value\.dtype is float64 but "
                 r"query\.dtype is float32")


def test_mask_not_broadcastable(tmp_path, inputs):
    mask = save(tmp_path, "in_m.npy", np.ones((5, 5), bool))
    assert_fails(tmp_path, ["run", *qkv(inputs), "--mask", mask], r"^sdpa: .*mask")


def test_output_directory_missing(tmp_path, inputs):
    assert_fails(tmp_path, ["run", *qkv(inputs), "--out", tmp_path / "nodir" / "o.npy"],
                 r"--out \S+o\.npy: cannot create a file in its directory: No such file")


def test_failure_keeps_an_existing_output(tmp_path, rng, inputs):
    old = tmp_path / "in_old_out.npy"  # named in_* so that no_outputs_left ignores it
    np.save(old, np.zeros(3))
    before = old.read_bytes()
    bad = save(tmp_path, "in_k2.npy", rng.standard_normal((2, 6, 7)).astype("f4"))
    assert_fails(tmp_path, ["run", *qkv(inputs, k=bad), "--out", old], r"head_dim")
    assert old.read_bytes() == before


def test_interrupted_run_leaves_no_output(tmp_path, rng):
    """SIGTERM while computing: the temporary output is removed and the signal ends the process."""
    q = rng.standard_normal((4, 2048, 64)).astype(np.float32)
    path = save(tmp_path, "in_q.npy", q)
    # The float64 reference takes seconds on this size: time to see the temporary file appear.
    process = subprocess.Popen([CLI, "run", "--query", path, "--key", path, "--value", path,
                                "--backend", "reference", "--out", tmp_path / "out.npy"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not any(".tmp." in name for name in os.listdir(tmp_path)):
        assert process.poll() is None and time.monotonic() < deadline, "no temporary file seen"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert no_outputs_left(tmp_path), os.listdir(tmp_path)


USAGE_ERRORS = [
    ("unknown_command", ["frobnicate"], r"^sdpa: unknown command 'frobnicate'"),
    ("no_command", [], r"^sdpa: no command given"),
    ("unknown_flag", ["run", "--bogus", "1"], r"^sdpa: run: unknown option '--bogus' \(see "
     r"'sdpa run --help'\)$"),
    ("missing_value", ["run", "--query"], r"option --query needs a value"),
    ("missing_required", ["run", "--query", "a.npy", "--key", "b.npy", "--value", "c.npy"],
     r"option --out is required"),
    ("positional", ["run", "extra"], r"unexpected argument 'extra'"),
    ("duplicate", ["info", "--threads", "1", "--threads", "2"], r"--threads is given more than"),
    ("bad_causal", ["run", "--causal", "diagonal"], r"--causal is 'diagonal' but must be one of: "
     r"none, top-left, bottom-right"),
    ("bad_scale", ["run", "--scale", "abc"], r"--scale is 'abc' but must be a finite number"),
    ("infinite_scale", ["run", "--scale", "inf"], r"--scale is 'inf'"),
    ("bad_threads", ["run", "--threads", "-1"], r"--threads is '-1' but must be an integer"),
    ("switch_with_value", ["bench", "--json=yes"], r"option --json takes no value"),
    ("bad_grid", ["bench", "--grid", "huge"], r"--grid is 'huge'"),
    ("bad_seq_len", ["demo", "--seq-len", "0"], r"--seq-len is '0'"),
]


@pytest.mark.parametrize("name,args,message", USAGE_ERRORS, ids=[c[0] for c in USAGE_ERRORS])
def test_usage_errors(tmp_path, name, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert os.listdir(tmp_path) == []


def test_out_and_lse_must_differ(tmp_path, inputs):
    assert_fails(tmp_path, ["run", *qkv(inputs), "--out", tmp_path / "x.npy", "--lse",
                            tmp_path / "x.npy"], r"--out and --lse are the same file", code=2)


# ---------------------------------------------------------------------------- help, demo, info, bench

@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"], ["help", "run"], ["run", "--help"],
                                  ["run", "-h"], ["demo", "--help"], ["bench", "--help"],
                                  ["info", "--help"], ["run", "--bogus", "--help"]])
def test_help(args):
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sdpa")
    assert result.stderr == ""


def test_version():
    result = run("--version")
    assert result.returncode == 0 and re.fullmatch(r"sdpa \d+\.\d+\.\d+\n", result.stdout)


def test_demo_prints_the_seed_result():
    result = run("demo", "--seq-len", "128")
    assert result.returncode == 0, result.stderr
    assert "[[1.660477, 2.660477]," in result.stdout
    assert "[2.339523, 3.339523]]" in result.stdout
    for needle in ("GFLOP/s", "of the measured FMA peak", "max |out - reference|", "peak RSS"):
        assert needle in result.stdout
    assert result.stderr == ""  # progress only on a terminal


def test_demo_default_long_case():
    """The README's first command, as is (L = 4096)."""
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "L = 4096" in result.stdout
    error = float(re.search(r"max \|out - reference\| = (\S+)", result.stdout).group(1))
    assert error < 1e-4


def test_info():
    result = run("info", "--threads", "1")
    assert result.returncode == 0, result.stderr
    for key in ("version:", "simd targets:", "simd target:", "threads:", "fma peak:"):
        assert key in result.stdout
    assert re.search(r"threads:\s+1\n", result.stdout)


def test_bench_json_parses():
    result = run("bench", "--grid", "tiny", "--min-time", "0", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["grid"] == "tiny" and report["threads"] == 1 and report["peak_gflops"] > 0
    assert len(report["rows"]) == 3
    causal_rows = [r for r in report["rows"] if r["causal"] == "top_left"]
    full_rows = [r for r in report["rows"] if r["causal"] == "none" and r["q_len"] == 64]
    # Causal counts exactly the visible pairs: 64·65/2 of 64·64.
    assert causal_rows[0]["gflop"] == pytest.approx(full_rows[0]["gflop"] * 65 / 128, rel=1e-5)
    for row in report["rows"]:
        assert row["seconds_median"] > 0 and row["gflops"] > 0 and row["runs"] >= 1


def test_bench_table():
    result = run("bench", "--grid", "tiny", "--min-time", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "GFLOP/s" in lines[1] and "of_peak" in lines[1]
    assert len(lines) == 2 + 3
