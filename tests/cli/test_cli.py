"""End-to-end tests of the `sdpa` command: they run the real binary on .npy files.

The binary is $SDPA_CLI (CI sets it to build/tools/sdpa), else `sdpa` on PATH; without either the
tests are skipped. Results are compared with a float64 numpy reference as
|x - ref| <= atol + rtol·|ref|. Every error case checks the exit code, that stderr is one line
starting "sdpa: " with the expected message, and that no output file (not even a temporary one)
is left behind. No timing assertions.
"""
import importlib.util
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
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


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float64, np.float16])
def test_float_mask_broadcast_and_converted(tmp_path, rng, mask_dtype):
    """A float mask broadcasts like numpy; one of another float type is added as it is."""
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
    ("int32", np.arange(12, dtype=np.int32).reshape(3, 4),
     r"--query \S+: dtype is int32 but must be a float dtype \(float32, float64, float16, "
     r"bfloat16\)$"),
    ("int64", np.arange(12, dtype=np.int64).reshape(3, 4), r"dtype is int64 but must be a float"),
    ("int16", np.arange(12, dtype=np.int16).reshape(3, 4), r"unsupported dtype '<i2'"),
    ("uint32", np.arange(12, dtype=np.uint32).reshape(3, 4), r"unsupported dtype '<u4'"),
    ("big_endian", GOOD.astype(">f4"), r"unsupported dtype '>f4': byte order"),
    ("complex", GOOD.astype(np.complex64), r"unsupported dtype '<c8'"),
    ("big_endian_float16", GOOD.astype(">f2"), r"unsupported dtype '>f2': byte order"),
    ("void_4_bytes", GOOD.astype("V4"), r"unsupported dtype '\|V4' \(supported: .*bfloat16 "
     r"'<V2' \(ml_dtypes\)"),
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


def assert_fails(tmp_path, args, message, code=1, outputs=("out.npy", "lse.npy"), cwd=None):
    """Runs with --out (and --lse) in tmp_path; checks the failure and that nothing was written."""
    extra = []
    if "--out" not in args:
        extra += ["--out", tmp_path / outputs[0]]
    if args and args[0] == "run" and "--lse" not in args:
        extra += ["--lse", tmp_path / outputs[1]]
    result = run(*args, *(extra if args and args[0] == "run" else []), cwd=cwd)
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


def test_integer_mask(tmp_path, inputs):
    mask = save(tmp_path, "in_m.npy", np.ones((5, 6), np.int64))
    assert_fails(tmp_path, ["run", *qkv(inputs), "--mask", mask],
                 r"^sdpa: --mask \S+: dtype is int64 but must be bool or a float dtype \(float32, "
                 r"float64, float16, bfloat16\)$")


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
    ("bad_bench_dtype", ["bench", "--dtype", "int8"],
     r"--dtype is 'int8' but must be one of: float32, f32, bfloat16, bf16, float16, f16"),
    ("bad_out_dtype", ["run", "--out-dtype", "half"], r"--out-dtype is 'half' but must be one "
     r"of: query, float32, float16, bfloat16, float64"),
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


# ---------------------------------------------------------------------------- outputs (issue 19)
# --out and --lse never destroy what they should not: a device or FIFO is written in place, a
# symbolic link is followed, an output that is the other output or an input is refused before any
# file is read, and no temporary file survives an error or a signal. Tests whose rule, broken,
# would damage the machine (/dev/null, /dev/stdout as root) first check the same rule on a copy in
# tmp_path and only then touch the real file.

def expected_out(inputs):
    return reference(*(np.load(inputs[n]) for n in "qkv"))[0]


def load_whole(data):
    """The array of a .npy file given as bytes; asserts that nothing follows it."""
    stream = io.BytesIO(data)
    array = np.load(stream)
    assert stream.tell() == len(data), f"{len(data) - stream.tell()} bytes after the array"
    return array


def assert_null_device(path):
    info = os.lstat(path)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3), oct(info.st_mode)


def test_device_out_is_written_in_place(tmp_path, inputs):
    """A character device is opened and written, never replaced by a regular file."""
    if os.geteuid() == 0:  # only root can make device nodes, and only root could replace one
        nodes = [tmp_path / "null_out", tmp_path / "null_lse"]
        for node in nodes:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        result = run("run", *qkv(inputs), "--out", nodes[0], "--lse", nodes[1])
        assert result.returncode == 0, result.stderr
        for node in nodes:
            assert_null_device(node)
        assert sorted(os.listdir(tmp_path)) == ["in_k.npy", "in_q.npy", "in_v.npy", "null_lse",
                                                "null_out"]
    result = run("run", *qkv(inputs), "--out", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/dev/null: float32 (2, 5, 4)")
    assert_null_device("/dev/null")


def test_fifo_out_is_written_in_place(tmp_path, inputs):
    """A FIFO read by `cat` gets the .npy bytes and stays a FIFO."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", fifo], stdout=subprocess.PIPE)
    try:
        result = run("run", *qkv(inputs), "--out", fifo, "--lse", tmp_path / "lse.npy", timeout=60)
        assert result.returncode == 0, result.stderr
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        data, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait()
    assert_close(load_whole(data), expected_out(inputs), np.float32)
    assert np.load(tmp_path / "lse.npy").shape == (2, 5)


def test_out_to_standard_output(tmp_path, inputs):
    """--out /dev/stdout into a pipe: stdout is exactly the .npy file, without the summary line,
    and the link /dev/stdout stays a link."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    for out in (link, "/dev/stdout"):
        result = subprocess.run([CLI, "run", *map(str, qkv(inputs)), "--out", str(out)],
                                capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""
        assert os.path.islink(link) and os.path.islink("/dev/stdout")
        assert_close(load_whole(result.stdout), expected_out(inputs), np.float32)


def _make_socket(path):
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))  # the socket file stays after close


# Targets that are refused (exit 1) and left as they were. name, how to make in_target
# (directory -> None), message regex after "--out <path>: ".
REFUSED_TARGETS = [
    ("socket", _make_socket, r"is a socket; sdpa writes only regular files, devices and FIFOs"),
    ("directory", lambda path: path.mkdir(), r"is a directory"),
    ("link_to_directory", lambda path: (path.parent / "in_dir").mkdir() or
     path.symlink_to("in_dir"), r"is a directory"),
    ("dangling_link", lambda path: path.symlink_to("in_nothere.npy"),
     r"is a dangling symbolic link \(to in_nothere\.npy\); sdpa does not create files through a "
     r"link"),
    ("link_loop", lambda path: path.symlink_to(path.name),
     r"cannot follow the symbolic link: Too many levels of symbolic links"),
]


@pytest.mark.parametrize("name,make,message", REFUSED_TARGETS, ids=[c[0] for c in REFUSED_TARGETS])
def test_refused_output_target(tmp_path, inputs, name, make, message):
    target = tmp_path / "in_target"
    make(target)
    before = os.lstat(target)
    assert_fails(tmp_path, ["run", *qkv(inputs), "--out", target],
                 r"^sdpa: --out \S+in_target: " + message + "$")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not (tmp_path / "in_nothere.npy").exists()


@pytest.mark.parametrize("flag", ["--out", "--lse"])
def test_symlink_out_updates_its_target(tmp_path, inputs, flag):
    """The link stays a link (relative, into another directory); the file it names is replaced."""
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "target.npy"
    np.save(target, np.zeros(3))
    link = tmp_path / "link.npy"
    link.symlink_to(os.path.join("elsewhere", "target.npy"))
    paths = {"--out": tmp_path / "out.npy", "--lse": tmp_path / "lse.npy", flag: link}
    result = run("run", *qkv(inputs), "--out", paths["--out"], "--lse", paths["--lse"])
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link) and os.readlink(link) == os.path.join("elsewhere", "target.npy")
    assert np.load(target).shape == ((2, 5, 4) if flag == "--out" else (2, 5))
    assert os.listdir(tmp_path / "elsewhere") == ["target.npy"]  # no temporary file left


# How an output path can name an existing file at `path` in `directory`.
SAME_FILE_FORMS = [
    ("same_path", lambda d, path: path),
    ("dot_slash", lambda d, path: os.path.join(d, ".", os.path.basename(path))),
    ("via_parent", lambda d, path: (d / "in_sub").mkdir() or
     os.path.join(d, "in_sub", "..", os.path.basename(path))),
    ("symlink", lambda d, path: (d / "in_link.npy").symlink_to(path) or d / "in_link.npy"),
    ("hard_link", lambda d, path: os.link(path, d / "in_hard.npy") or d / "in_hard.npy"),
]


def assert_same_file_refused(tmp_path, args, output_flag, output, input_flag, input_path,
                             protected, cwd=None):
    """Exit 2 naming both flags and paths, before anything is written; `protected` unchanged."""
    before = {path: open(path, "rb").read() for path in protected}
    assert_fails(tmp_path, args, "^sdpa: run: " + re.escape(
        f"{output_flag} {output} is the same file as {input_flag} {input_path}; choose another "
        "output path") + "$", code=2, cwd=cwd)
    for path, content in before.items():
        assert open(path, "rb").read() == content, path


@pytest.mark.parametrize("form", [c[1] for c in SAME_FILE_FORMS],
                         ids=[c[0] for c in SAME_FILE_FORMS])
def test_output_that_is_an_input_is_refused(tmp_path, inputs, form):
    out = form(tmp_path, inputs["q"])
    assert_same_file_refused(tmp_path, ["run", *qkv(inputs), "--out", out], "--out", out,
                             "--query", inputs["q"], [inputs["q"]])


# Every input flag. flag, what in_x.npy holds, the arguments (inputs, x) that make it read x.
INPUT_FLAGS = [
    ("--key", np.zeros((2, 6, 8), np.float32), lambda i, x: qkv(i, k=x)),
    ("--value", np.zeros((2, 6, 4), np.float32), lambda i, x: qkv(i, v=x)),
    ("--mask", np.ones((5, 6), bool), lambda i, x: [*qkv(i), "--mask", x]),
    ("--alibi-slopes", np.float32([0.5, 0.25]), lambda i, x: [*qkv(i), "--alibi-slopes", f"@{x}"]),
    ("--sinks", np.float32([0, 1]), lambda i, x: [*qkv(i), "--sinks", f"@{x}"]),
    ("--cu-seqlens-q", np.int64([0, 5]),
     lambda i, x: [*qkv(i), "--cu-seqlens-q", f"@{x}", "--cu-seqlens-k", "0,6"]),
    ("--cu-seqlens-k", np.int64([0, 6]),
     lambda i, x: [*qkv(i), "--cu-seqlens-q", "0,5", "--cu-seqlens-k", f"@{x}"]),
]


@pytest.mark.parametrize("output_flag", ["--out", "--lse"])
@pytest.mark.parametrize("input_flag,content,args", INPUT_FLAGS, ids=[c[0] for c in INPUT_FLAGS])
def test_every_input_flag_is_checked(tmp_path, inputs, output_flag, input_flag, content, args):
    """A hard link to any input, given as either output, is refused."""
    x = save(tmp_path, "in_x.npy", content)
    assert run("run", *args(inputs, x), "--out", tmp_path / "o.npy").returncode == 0
    os.remove(tmp_path / "o.npy")  # the inputs are valid: only the output path is wrong below
    output = tmp_path / "in_hard.npy"
    os.link(x, output)
    assert_same_file_refused(tmp_path, ["run", *args(inputs, x), output_flag, output],
                             output_flag, output, input_flag, x, [x])


# --out and --lse naming one file, relative to the directory. name, make files, out, lse.
OUT_LSE_FORMS = [
    ("same_new_name", lambda d: None, "o.npy", "o.npy"),
    ("dot_slash", lambda d: None, "o.npy", "./o.npy"),
    ("via_parent", lambda d: (d / "in_sub").mkdir(), "o.npy", "in_sub/../o.npy"),
    ("via_directory_link", lambda d: (d / "in_here").symlink_to("."), "o.npy", "in_here/o.npy"),
    ("two_links_to_one_file", lambda d: np.save(d / "in_old.npy", np.zeros(2)) or
     (d / "in_l1.npy").symlink_to("in_old.npy") or (d / "in_l2.npy").symlink_to("in_old.npy"),
     "in_l1.npy", "in_l2.npy"),
    ("hard_links", lambda d: np.save(d / "in_old.npy", np.zeros(2)) or
     os.link(d / "in_old.npy", d / "in_h.npy"), "in_old.npy", "in_h.npy"),
]


@pytest.mark.parametrize("name,make,out,lse", OUT_LSE_FORMS, ids=[c[0] for c in OUT_LSE_FORMS])
def test_out_and_lse_must_differ(tmp_path, inputs, name, make, out, lse):
    """Refused before any input is read: here the key does not even exist."""
    make(tmp_path)
    protected = [tmp_path / "in_old.npy"] if (tmp_path / "in_old.npy").exists() else []
    assert_same_file_refused(tmp_path, ["run", *qkv(inputs, k=tmp_path / "in_nothere.npy"),
                                        "--out", out, "--lse", lse],
                             "--lse", lse, "--out", out, protected, cwd=tmp_path)


def test_file_size_limit_is_a_write_error(tmp_path, rng):
    """ulimit -f: SIGXFSZ is ignored, so the write fails (EFBIG) and is reported like a full
    disk; the temporary file is removed."""
    q = save(tmp_path, "in_q.npy", rng.standard_normal((2, 64, 64)).astype("f4"))  # out: 32 KiB

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the old default action dumped core

    result = subprocess.run([CLI, "run", "--query", q, "--key", q, "--value", q,
                             "--out", str(tmp_path / "out.npy")], capture_output=True, text=True,
                            timeout=120, preexec_fn=limit_file_size)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert re.fullmatch(r"sdpa: --out \S+out\.npy: write failed: File too large\n", result.stderr)
    assert no_outputs_left(tmp_path), os.listdir(tmp_path)


def start_long_run(tmp_path, rng, heads=4, preexec_fn=None):
    """A run that takes seconds (the float64 reference on 2048 x 2048), once its temporary
    files exist."""
    q = rng.standard_normal((heads, 2048, 64)).astype(np.float32)
    path = save(tmp_path, "in_q.npy", q)
    process = subprocess.Popen([CLI, "run", "--query", path, "--key", path, "--value", path,
                                "--backend", "reference", "--out", tmp_path / "out.npy",
                                "--lse", tmp_path / "lse.npy"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=preexec_fn)
    deadline = time.monotonic() + 60
    while sum(".tmp." in name for name in os.listdir(tmp_path)) < 2:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail("no temporary files seen")
        time.sleep(0.01)
    return process


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                           signal.SIGPIPE], ids=lambda s: signal.Signals(s).name)
def test_signal_removes_the_temporary_files(tmp_path, rng, signal_number):
    """Ctrl-C or kill while computing: exit 128 + signal (130 for SIGINT), nothing left."""
    process = start_long_run(tmp_path, rng)
    try:
        process.send_signal(signal_number)
        assert process.wait(timeout=60) == 128 + signal_number
    finally:
        process.kill()
        process.wait()
    assert process.stdout.read() == b"" and process.stderr.read() == b""
    assert no_outputs_left(tmp_path), os.listdir(tmp_path)


def test_ignored_hangup_stays_ignored(tmp_path, rng):
    """Under nohup (SIGHUP ignored by the parent) a hangup does not stop the run."""
    process = start_long_run(tmp_path, rng, heads=1,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=120) == 0, process.stderr.read()
    finally:
        process.kill()
        process.wait()
    assert np.load(tmp_path / "out.npy").shape == (1, 2048, 64)


def test_help_documents_the_output_rules():
    result = run("run", "--help")
    for phrase in ("written in place", "symbolic link is followed", "dangling link",
                   "same file", "128 + the signal number (130 for Ctrl-C)", "ulimit -f"):
        assert phrase in result.stdout, phrase

# ---------------------------------------------------------------------------- variants (issue 7)
# --window, --alibi-slopes, --softcap, --sinks, --cu-seqlens-q/-k, --dropout, --seed. Results are
# compared with variant_attention of tests/python/sdpa_reference.py: the project's float64 numpy
# oracle of every variant, written from options.h with its own Philox4x32-10 (Random123 known
# answers), so dropout is checked value by value too. Loaded by path: tests/python is not a
# package, and this file must not depend on which folders pytest was given.

def _load_variant_reference():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python",
                        "sdpa_reference.py")
    spec = importlib.util.spec_from_file_location("sdpa_reference_for_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.variant_attention


variant_attention = _load_variant_reference()


def save_list(directory, name, values, dtype):
    """Saves a 1-D array and returns the @FILE argument for it."""
    return "@" + save(directory, name, np.asarray(values, dtype=dtype))


def _write(path, content):
    path.write_bytes(content)
    return str(path)


def run_variant(tmp_path, q, k, v, args, out="out.npy", lse="lse.npy"):
    """Runs `sdpa run` with extra args; returns (out, lse) as written."""
    result = run("run", "--query", save(tmp_path, "in_q.npy", q),
                 "--key", save(tmp_path, "in_k.npy", k), "--value", save(tmp_path, "in_v.npy", v),
                 "--out", tmp_path / out, "--lse", tmp_path / lse, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return np.load(tmp_path / out), np.load(tmp_path / lse)


# One case per variant and a few combinations. `args` builds the command line (it may write @FILE
# lists into the directory it is given); `ref` holds variant_attention's keywords.
VARIANT_CASES = [
    # name, q shape, k shape, v shape, dtype, args(dir), ref
    ("window_bottom_right", (1, 2, 9, 8), (1, 2, 13, 8), (1, 2, 13, 8), np.float32,
     lambda d: ["--window", "3,1"], dict(window=(3, 1))),
    ("window_left_only_top_left", (3, 11, 8), (3, 11, 8), (3, 11, 4), np.float64,
     lambda d: ["--window", "2,", "--causal", "top-left"], dict(window=(2, None), causal="top_left")),
    ("window_right_zero_inf_left", (2, 7, 8), (2, 10, 8), (2, 10, 8), np.float32,
     lambda d: ["--window", "inf,0"], dict(window=(None, 0))),
    ("window_zero_zero_lq_gt_lkv", (1, 12, 4), (1, 5, 4), (1, 5, 4), np.float64,
     lambda d: ["--window", "0,0"], dict(window=(0, 0))),  # rows before the diagonal see nothing
    ("window_unbounded_both", (2, 6, 8), (2, 6, 8), (2, 6, 8), np.float32,
     lambda d: ["--window", ","], dict(window=(None, None))),
    ("alibi_list_gqa_causal", (1, 4, 8, 16), (1, 2, 10, 16), (1, 2, 10, 16), np.float32,
     lambda d: ["--alibi-slopes", "0.5,0.25,0.125,0.0625", "--causal", "bottom-right"],
     dict(alibi_slopes=[0.5, 0.25, 0.125, 0.0625], causal="bottom_right")),
    ("alibi_file_f32", (2, 5, 8), (2, 9, 8), (2, 9, 3), np.float64,
     lambda d: ["--alibi-slopes", save_list(d, "in_slopes.npy", [0.75, -0.5], np.float32)],
     dict(alibi_slopes=np.float32([0.75, -0.5]))),
    ("softcap", (2, 2, 6, 8), (2, 2, 7, 8), (2, 2, 7, 8), np.float64,
     lambda d: ["--softcap", "1.5", "--scale", "1"], dict(softcap=1.5, scale=1.0)),
    ("softcap_causal_f32", (2, 9, 16), (2, 9, 16), (2, 9, 16), np.float32,
     lambda d: ["--softcap", "2", "--causal", "top-left"], dict(softcap=2.0, causal="top_left")),
    ("sinks_list_with_minus_inf", (1, 3, 6, 8), (1, 3, 8, 8), (1, 3, 8, 8), np.float32,
     lambda d: ["--sinks", "0.5,-inf,2.25"], dict(sinks=[0.5, -np.inf, 2.25])),
    ("sinks_file_f64_causal", (2, 7, 8), (2, 7, 8), (2, 7, 8), np.float64,
     lambda d: ["--sinks", save_list(d, "in_sinks.npy", [-1.0, 3.0], np.float64),
                "--causal", "top-left"], dict(sinks=[-1.0, 3.0], causal="top_left")),
    ("varlen_lists_causal", (2, 9, 8), (2, 11, 8), (2, 11, 8), np.float32,
     lambda d: ["--cu-seqlens-q", "0,4,4,9", "--cu-seqlens-k", "0,3,5,11", "--causal",
                "bottom-right"],  # sequence 1 has no queries, sequence 0 fewer keys than queries
     dict(cu_seqlens_q=[0, 4, 4, 9], cu_seqlens_k=[0, 3, 5, 11], causal="bottom_right")),
    ("varlen_files_int32_int64", (1, 2, 10, 8), (1, 2, 10, 8), (1, 2, 10, 4), np.float64,
     lambda d: ["--cu-seqlens-q", save_list(d, "in_cuq.npy", [0, 3, 10], np.int32),
                "--cu-seqlens-k", save_list(d, "in_cuk.npy", [0, 6, 10], np.int64)],
     dict(cu_seqlens_q=[0, 3, 10], cu_seqlens_k=[0, 6, 10])),
    ("varlen_single_row", (1, 1, 4), (1, 3, 4), (1, 3, 4), np.float32,
     lambda d: ["--cu-seqlens-q", "0,1", "--cu-seqlens-k", "0,3"],
     dict(cu_seqlens_q=[0, 1], cu_seqlens_k=[0, 3])),
    ("all_together_gqa", (1, 4, 12, 8), (1, 2, 14, 8), (1, 2, 14, 8), np.float64,
     lambda d: ["--window", "4,1", "--alibi-slopes", "0.5,0.25,0.125,0.0625", "--softcap", "3",
                "--sinks", "0,-0.5,1,-inf", "--cu-seqlens-q", "0,5,12",
                "--cu-seqlens-k", "0,6,14", "--causal", "bottom-right"],
     dict(window=(4, 1), alibi_slopes=[0.5, 0.25, 0.125, 0.0625], softcap=3.0,
          sinks=[0, -0.5, 1, -np.inf], cu_seqlens_q=[0, 5, 12], cu_seqlens_k=[0, 6, 14],
          causal="bottom_right")),
    ("dropout_f64", (2, 2, 9, 8), (2, 2, 11, 8), (2, 2, 11, 8), np.float64,
     lambda d: ["--dropout", "0.25", "--seed", str(2**40 + 7)],
     dict(dropout_p=0.25, seed=2**40 + 7)),
    ("dropout_varlen_window", (1, 2, 10, 8), (1, 2, 10, 8), (1, 2, 10, 8), np.float32,
     lambda d: ["--dropout", "0.5", "--seed", "18446744073709551615", "--window", "2,2",
                "--cu-seqlens-q", "0,4,10", "--cu-seqlens-k", "0,4,10"],
     dict(dropout_p=0.5, seed=2**64 - 1, window=(2, 2), cu_seqlens_q=[0, 4, 10],
          cu_seqlens_k=[0, 4, 10])),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name,qs,ks,vs,dtype,args,ref", VARIANT_CASES,
                         ids=[c[0] for c in VARIANT_CASES])
def test_variant_matches_numpy(tmp_path, rng, backend, name, qs, ks, vs, dtype, args, ref):
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in (qs, ks, vs))
    if "softcap" in ref:
        q = q * 3  # scores beyond the cap, where tanh bends
    out, lse = run_variant(tmp_path, q, k, v, [*args(tmp_path), "--backend", backend])
    expected_out, expected_lse = variant_attention(q, k, v, **ref)
    assert out.dtype == dtype and lse.dtype == dtype
    assert out.shape == expected_out.shape and lse.shape == expected_lse.shape
    assert_close(out, expected_out, dtype)
    assert_close(lse, expected_lse, dtype)


def test_window_changes_the_result(tmp_path, rng):
    """The flag reaches the library: a window of 1 is not full attention."""
    q, k, v = (rng.standard_normal((2, 8, 8)).astype(np.float64) for _ in range(3))
    windowed, _ = run_variant(tmp_path, q, k, v, ["--window", "1,1"])
    assert not np.allclose(windowed, reference(q, k, v)[0])


def test_sinks_give_rows_without_keys_their_sink_as_lse(tmp_path, rng):
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    mask = np.ones((4, 4), bool)
    mask[1] = False
    out, lse = run_variant(tmp_path, q, k, v, ["--sinks", "0.5,-inf",
                                                "--mask", save(tmp_path, "in_m.npy", mask)])
    assert np.all(out[0, :, 1] == 0)
    assert lse[0, 0, 1] == np.float32(0.5) and lse[0, 1, 1] == -np.inf
    expected_out, expected_lse = variant_attention(q, k, v, mask=mask, sinks=[0.5, -np.inf])
    assert_close(out, expected_out, np.float32)
    assert_close(lse, expected_lse, np.float32)


@pytest.fixture
def dropout_inputs(tmp_path, rng):
    q, k, v = (rng.standard_normal((2, 3, 33, 16)).astype(np.float32) for _ in range(3))
    return [save(tmp_path, f"in_{n}.npy", x) for n, x in zip("qkv", (q, k, v))]


def run_dropout(tmp_path, paths, out, *args):
    result = run("run", "--query", paths[0], "--key", paths[1], "--value", paths[2],
                 "--out", tmp_path / out, "--dropout", "0.3", *args)
    assert result.returncode == 0, result.stderr
    return (tmp_path / out).read_bytes()


def test_dropout_same_seed_same_file(tmp_path, dropout_inputs):
    first = run_dropout(tmp_path, dropout_inputs, "a.npy", "--seed", "42")
    assert run_dropout(tmp_path, dropout_inputs, "b.npy", "--seed", "42") == first
    # Any thread count draws the same decisions (Philox keyed by position, not by thread).
    assert run_dropout(tmp_path, dropout_inputs, "c.npy", "--seed", "42", "--threads", "1") == first
    assert run_dropout(tmp_path, dropout_inputs, "d.npy", "--seed", "42", "--threads", "2") == first


def test_dropout_different_seeds_differ(tmp_path, dropout_inputs):
    files = [run_dropout(tmp_path, dropout_inputs, "a.npy", "--seed", "1"),
             run_dropout(tmp_path, dropout_inputs, "b.npy", "--seed", "2"),
             run_dropout(tmp_path, dropout_inputs, "c.npy")]  # no --seed is seed 0
    assert len(set(files)) == 3
    # Not just different bits: a different subset of the probabilities is dropped.
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.abs(a - b).max() > 1e-2


def test_dropout_zero_is_no_dropout(tmp_path, dropout_inputs):
    result = run("run", "--query", dropout_inputs[0], "--key", dropout_inputs[1],
                 "--value", dropout_inputs[2], "--out", tmp_path / "plain.npy")
    assert result.returncode == 0, result.stderr
    result = run("run", "--query", dropout_inputs[0], "--key", dropout_inputs[1],
                 "--value", dropout_inputs[2], "--out", tmp_path / "zero.npy", "--dropout", "0",
                 "--seed", "9")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plain.npy").read_bytes() == (tmp_path / "zero.npy").read_bytes()


def test_help_documents_the_variant_flags():
    result = run("run", "--help")
    assert result.returncode == 0
    for flag in ("--window L,R", "--alibi-slopes LIST", "--softcap C", "--sinks LIST",
                 "--cu-seqlens-q LIST", "--cu-seqlens-k LIST", "--dropout P", "--seed S",
                 "@FILE.npy"):
        assert flag in result.stdout, flag


# A bad command line: exit 2 before any file is read. name, extra args, message regex.
VARIANT_USAGE_ERRORS = [
    ("window_no_comma", ["--window", "5"], r"--window is '5' but must be LEFT,RIGHT with each side "
     r"an integer, or empty or 'inf' for unbounded \(e\.g\. 256,0 or 128,\) \(see 'sdpa run "
     r"--help'\)$"),
    ("window_three_sides", ["--window", "1,2,3"], r"--window is '1,2,3' but must be LEFT,RIGHT"),
    ("window_word", ["--window", "a,0"], r"--window is 'a,0'"),
    ("window_float", ["--window", "1.5,0"], r"--window is '1\.5,0'"),
    ("window_minus_inf", ["--window", "-inf,0"], r"--window is '-inf,0'"),
    ("window_space", ["--window", " 1,0"], r"--window is ' 1,0'"),
    ("window_overflow", ["--window", "99999999999999999999,0"], r"--window is '9+,0'"),
    ("window_empty", ["--window", ""], r"--window is ''"),
    ("alibi_empty", ["--alibi-slopes", ""], r"option --alibi-slopes is empty"),
    ("alibi_empty_item", ["--alibi-slopes", "0.5,,0.25"], r"--alibi-slopes is '0\.5,,0\.25' but "
     r"must be numbers separated by commas, or @FILE\.npy \(see 'sdpa run --help'\)$"),
    ("alibi_trailing_comma", ["--alibi-slopes", "0.5,"], r"--alibi-slopes is '0\.5,'"),
    ("alibi_word", ["--alibi-slopes", "slopes.npy"], r"--alibi-slopes is 'slopes\.npy' but must "
     r"be numbers separated by commas, or @FILE\.npy"),
    ("alibi_at_only", ["--alibi-slopes", "@"], r"--alibi-slopes is '@' but must name a file"),
    ("alibi_twice", ["--alibi-slopes", "1,2", "--alibi-slopes", "3,4"],
     r"option --alibi-slopes is given more than once"),
    ("sinks_semicolons", ["--sinks", "1;2"], r"--sinks is '1;2' but must be numbers"),
    ("sinks_space", ["--sinks", "1, 2"], r"--sinks is '1, 2'"),
    ("softcap_word", ["--softcap", "big"], r"--softcap is 'big' but must be a finite number"),
    ("softcap_inf", ["--softcap", "inf"], r"--softcap is 'inf' but must be a finite number"),
    ("cu_q_only", ["--cu-seqlens-q", "0,5"], r"--cu-seqlens-q needs --cu-seqlens-k too \(see "
     r"'sdpa run --help'\)$"),
    ("cu_k_only", ["--cu-seqlens-k", "0,6"], r"--cu-seqlens-k needs --cu-seqlens-q too"),
    ("cu_float_item", ["--cu-seqlens-q", "0,2.5,5", "--cu-seqlens-k", "0,3,6"],
     r"--cu-seqlens-q is '0,2\.5,5' but must be integers separated by commas, or @FILE\.npy"),
    ("cu_overflow", ["--cu-seqlens-q", "0,5", "--cu-seqlens-k", "0,99999999999999999999"],
     r"--cu-seqlens-k is '0,9+' but must be integers"),
    ("dropout_word", ["--dropout", "half"], r"--dropout is 'half' but must be a finite number"),
    ("dropout_nan", ["--dropout", "nan"], r"--dropout is 'nan'"),
    ("seed_negative", ["--dropout", "0.1", "--seed", "-1"], r"--seed is '-1' but must be an "
     r"integer in \[0, 18446744073709551615\] \(see 'sdpa run --help'\)$"),
    ("seed_overflow", ["--seed", "18446744073709551616"], r"--seed is '18446744073709551616'"),
    ("seed_float", ["--seed", "1.0"], r"--seed is '1\.0'"),
    ("seed_plus", ["--seed", "+1"], r"--seed is '\+1'"),
    ("seed_empty", ["--seed", ""], r"--seed is ''"),
]


@pytest.mark.parametrize("name,args,message", VARIANT_USAGE_ERRORS,
                         ids=[c[0] for c in VARIANT_USAGE_ERRORS])
def test_variant_usage_errors(tmp_path, inputs, name, args, message):
    line = assert_fails(tmp_path, ["run", *qkv(inputs), *args], r"^sdpa: run: " + message, code=2)
    assert "--query" not in line  # reported before any file is read


# Valid command lines that the library (exit 1, its message) or a @FILE (exit 1) refuses. The
# inputs fixture is query (2, 5, 8), key (2, 6, 8), value (2, 6, 4): 2 heads, q_len 5, kv_len 6.
# name, extra args (callable on the directory, for files), message regex.
VARIANT_FAILURES = [
    ("window_left_negative", lambda d: ["--window", "-1,0"],
     r"^sdpa: options\.window\.left is -1 but must be >= 0$"),
    ("window_right_negative", lambda d: ["--window", ",-2"],
     r"^sdpa: options\.window\.right is -2 but must be >= 0$"),
    ("alibi_one_per_head", lambda d: ["--alibi-slopes", "0.5"],
     r"^sdpa: options\.alibi_slopes has 1 values but must have one per query head \(2\)$"),
    ("alibi_infinite", lambda d: ["--alibi-slopes", "0.5,inf"],
     r"^sdpa: options\.alibi_slopes\[1\] is inf but must be finite$"),
    ("alibi_nan", lambda d: ["--alibi-slopes", "nan,1"], r"options\.alibi_slopes\[0\] is nan"),
    ("softcap_zero", lambda d: ["--softcap", "0"],
     r"^sdpa: options\.softcap is 0 but must be finite and > 0$"),
    ("softcap_negative", lambda d: ["--softcap", "-2"], r"options\.softcap is -2"),
    ("sinks_three_for_two_heads", lambda d: ["--sinks", "1,2,3"],
     r"^sdpa: options\.sinks has 3 values but must have one per query head \(2\)$"),
    ("sinks_plus_inf", lambda d: ["--sinks", "0,inf"],
     r"^sdpa: options\.sinks\[1\] is inf but must be finite or -inf$"),
    ("cu_lengths_differ", lambda d: ["--cu-seqlens-q", "0,5", "--cu-seqlens-k", "0,2,6"],
     r"^sdpa: options\.cu_seqlens_q has 2 values but options\.cu_seqlens_k has 3"),
    ("cu_not_from_zero", lambda d: ["--cu-seqlens-q", "1,5", "--cu-seqlens-k", "0,6"],
     r"^sdpa: options\.cu_seqlens_q\[0\] is 1 but must be 0$"),
    ("cu_decreasing", lambda d: ["--cu-seqlens-q", "0,3,2,5", "--cu-seqlens-k", "0,2,4,6"],
     r"options\.cu_seqlens_q\[2\] is 2, below options\.cu_seqlens_q\[1\] = 3"),
    ("cu_not_to_q_len", lambda d: ["--cu-seqlens-q", "0,4", "--cu-seqlens-k", "0,6"],
     r"^sdpa: options\.cu_seqlens_q\[1\] is 4 but must be 5 \(q_len\)$"),
    ("cu_not_to_kv_len", lambda d: ["--cu-seqlens-q", "0,5", "--cu-seqlens-k", "0,7"],
     r"options\.cu_seqlens_k\[1\] is 7 but must be 6 \(kv_len\)$"),
    ("cu_one_value", lambda d: ["--cu-seqlens-q", "0", "--cu-seqlens-k", "0"],
     r"options\.cu_seqlens_q has 1 values but must have at least 2"),
    ("dropout_above_one", lambda d: ["--dropout", "1.5"],
     r"^sdpa: options\.dropout_p is 1\.5 but must be in \[0, 1\]$"),
    ("dropout_negative", lambda d: ["--dropout", "-0.1"], r"options\.dropout_p is -0\.1"),
    # @FILE lists: the file's problems name the flag and the file.
    ("alibi_file_missing", lambda d: ["--alibi-slopes", "@" + str(d / "in_nothere.npy")],
     r"^sdpa: --alibi-slopes \S+in_nothere\.npy: cannot open: No such file or directory$"),
    ("alibi_file_directory", lambda d: ["--alibi-slopes", "@" + str(d)],
     r"^sdpa: --alibi-slopes \S+: is a directory$"),
    ("alibi_file_int", lambda d: ["--alibi-slopes", save_list(d, "in_a.npy", [1, 2], np.int64)],
     r"^sdpa: --alibi-slopes \S+in_a\.npy: dtype is int64 but must be float32 or float64$"),
    ("alibi_file_bool", lambda d: ["--alibi-slopes", save_list(d, "in_a.npy", [1, 0], bool)],
     r"dtype is bool but must be float32 or float64$"),
    ("sinks_file_float16", lambda d: ["--sinks", save_list(d, "in_s.npy", [1, 0], np.float16)],
     r"^sdpa: --sinks \S+in_s\.npy: dtype is float16 but must be float32 or float64$"),
    ("alibi_file_2d", lambda d: ["--alibi-slopes",
                                 "@" + save(d, "in_a.npy", np.ones((1, 2)))],
     r"--alibi-slopes \S+: shape is \(1, 2\) but must be 1-D with at least one value$"),
    ("alibi_file_scalar", lambda d: ["--alibi-slopes", "@" + save(d, "in_a.npy", np.float64(1))],
     r"shape is \(\) but must be 1-D"),
    ("sinks_file_empty", lambda d: ["--sinks", save_list(d, "in_s.npy", [], np.float32)],
     r"^sdpa: --sinks \S+in_s\.npy: shape is \(0,\) but must be 1-D with at least one value$"),
    ("sinks_file_wrong_length", lambda d: ["--sinks", save_list(d, "in_s.npy", [1], np.float32)],
     r"^sdpa: options\.sinks has 1 values but must have one per query head \(2\)$"),
    ("sinks_file_not_npy", lambda d: ["--sinks", "@" + str(d / "in_q.npy") + ".txt"],
     r"^sdpa: --sinks \S+: cannot open"),
    ("sinks_file_text", lambda d: ["--sinks", "@" + _write(d / "in_s.txt", b"1,2\n")],
     r"^sdpa: --sinks \S+in_s\.txt: not a \.npy file"),
    ("cu_file_float", lambda d: ["--cu-seqlens-q", save_list(d, "in_c.npy", [0, 5], np.float64),
                                 "--cu-seqlens-k", "0,6"],
     r"^sdpa: --cu-seqlens-q \S+in_c\.npy: dtype is float64 but must be int32 or int64$"),
    ("cu_file_int16", lambda d: ["--cu-seqlens-q", save_list(d, "in_c.npy", [0, 5], np.int16),
                                 "--cu-seqlens-k", "0,6"],
     r"--cu-seqlens-q \S+: unsupported dtype '<i2'"),
    ("cu_file_uint64", lambda d: ["--cu-seqlens-q", "0,5",
                                  "--cu-seqlens-k", save_list(d, "in_c.npy", [0, 6], np.uint64)],
     r"--cu-seqlens-k \S+: unsupported dtype '<u8'"),
    ("cu_file_big_endian", lambda d: ["--cu-seqlens-q", save_list(d, "in_c.npy", [0, 5], ">i8"),
                                      "--cu-seqlens-k", "0,6"],
     r"--cu-seqlens-q \S+: unsupported dtype '>i8': byte order"),
    ("cu_file_truncated", lambda d: ["--cu-seqlens-q", "@" + _write(
        d / "in_c.npy", npy_bytes(np.array([0, 5], np.int32))[:-2]), "--cu-seqlens-k", "0,6"],
     r"--cu-seqlens-q \S+: data is truncated: the header says shape \(2,\) of int32, 8 bytes, "
     r"but only 6"),
    ("cu_file_2d", lambda d: ["--cu-seqlens-q", "0,5", "--cu-seqlens-k",
                              "@" + save(d, "in_c.npy", np.array([[0, 6]], np.int32))],
     r"--cu-seqlens-k \S+: shape is \(1, 2\) but must be 1-D"),
    ("cu_file_bad_values", lambda d: ["--cu-seqlens-q", save_list(d, "in_c.npy", [0, 6], np.int32),
                                      "--cu-seqlens-k", "0,6"],
     r"^sdpa: options\.cu_seqlens_q\[1\] is 6 but must be 5 \(q_len\)$"),
]


@pytest.mark.parametrize("name,args,message", VARIANT_FAILURES, ids=[c[0] for c in VARIANT_FAILURES])
def test_variant_failures(tmp_path, inputs, name, args, message):
    assert_fails(tmp_path, ["run", *qkv(inputs), *args(tmp_path)], message)


def test_varlen_needs_batch_one(tmp_path, rng):
    q = save(tmp_path, "in_q.npy", rng.standard_normal((2, 1, 5, 8)).astype("f4"))
    assert_fails(tmp_path, ["run", "--query", q, "--key", q, "--value", q,
                            "--cu-seqlens-q", "0,5", "--cu-seqlens-k", "0,5"],
                 r"^sdpa: query\.shape batch is 2 but must be 1 with options\.cu_seqlens_q")


def test_variant_failure_keeps_an_existing_output(tmp_path, inputs):
    old = tmp_path / "in_old_out.npy"
    np.save(old, np.zeros(3))
    before = old.read_bytes()
    assert_fails(tmp_path, ["run", *qkv(inputs), "--softcap", "-1", "--out", old],
                 r"options\.softcap")
    assert old.read_bytes() == before


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


# ---------------------------------------------------------------------------- 16-bit (issue 13)
# float16 files are '<f2'; bfloat16 files are what np.save writes for an ml_dtypes.bfloat16 array,
# '<V2' (np.load gives a V2 array; .view(ml_dtypes.bfloat16) reads it). Results against the
# float64 reference on the same 16-bit values, within the bounds of docs/semantics.md 13.9 as a
# fraction of max|V|: bfloat16 5e-3, float16 1e-3, float32 queries on a 16-bit cache 2e-3.

HALF_BOUND = {"float16": 1e-3, "bfloat16": 5e-3}


def half_dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(np.float16)


def load_as(path, dtype):
    """A .npy output read back in `dtype` (bfloat16 files load as V2)."""
    array = np.load(path)
    return array.view(dtype) if array.dtype.kind == "V" else array


def assert_within_fraction(actual, expected, bound, scale):
    error = np.abs(actual.astype(np.float64) - expected).max() / scale
    assert error <= bound, f"max error {error:.3g} of max|V| above {bound}"


@pytest.mark.parametrize("causal", [None, "bottom-right"])
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_16_bit_files_match_numpy(tmp_path, rng, name, causal):
    dtype = half_dtype(name)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((1, 4, 9, 32), (1, 2, 20, 32),
                                                              (1, 2, 20, 16)))
    mask = rng.random((9, 20)) < 0.7
    mask[4] = False  # row 4 sees no key: out = 0, lse = -inf
    args = ["run", "--query", save(tmp_path, "q.npy", q), "--key", save(tmp_path, "k.npy", k),
            "--value", save(tmp_path, "v.npy", v), "--mask", save(tmp_path, "m.npy", mask),
            "--out", tmp_path / "o.npy", "--lse", tmp_path / "l.npy"]
    result = run(*args, *(["--causal", causal] if causal else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'o.npy'}: {name} (1, 4, 9, 16)")
    descr = {"float16": "<f2", "bfloat16": "<V2"}[name]  # what np.save writes for the dtype
    assert f"'descr': '{descr}'".encode() in (tmp_path / "o.npy").read_bytes()[:128]
    out, lse = load_as(tmp_path / "o.npy", dtype), np.load(tmp_path / "l.npy")
    assert out.dtype == dtype and lse.dtype == np.float32
    ref_out, ref_lse = reference(q, k, v, mask=mask, causal=causal)
    assert_within_fraction(out, ref_out, HALF_BOUND[name], np.abs(v.astype(np.float64)).max())
    assert_close(lse, ref_lse, np.float32)
    assert not out[:, :, 4].astype(np.float64).any()


@pytest.mark.parametrize("out_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_out_dtype_and_float32_queries_on_a_16_bit_cache(tmp_path, rng, name, out_dtype):
    cache, out_type = half_dtype(name), half_dtype(out_dtype) if out_dtype != "float32" \
        else np.dtype(np.float32)
    q = rng.standard_normal((2, 3, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, 30, 16)).astype(cache) for _ in range(2))
    result = run("run", "--query", save(tmp_path, "q.npy", q), "--key", save(tmp_path, "k.npy", k),
                 "--value", save(tmp_path, "v.npy", v), "--out", tmp_path / "o.npy",
                 "--out-dtype", out_dtype, "--causal", "bottom-right")
    assert result.returncode == 0, result.stderr
    out = load_as(tmp_path / "o.npy", out_type)
    assert out.dtype == out_type
    ref = reference(q, k, v, causal="bottom-right")[0]
    # the cache bound, plus the rounding of the result to a 16-bit out (half an ulp of |out| <= 1)
    rounding = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[out_dtype]
    scale = np.abs(v.astype(np.float64)).max()
    assert_within_fraction(out, ref, 2e-3 + rounding / scale, scale)


@pytest.mark.parametrize("args, message", [
    (["--out-dtype", "float64"], r"^sdpa: run: --out-dtype is float64 but the query is float16; "
     r"float64 outputs need float64 inputs$"),
    ([], r"^sdpa: value\.dtype is float32 but key\.dtype is float16; key and value must share a "
     r"dtype$"),
], ids=["float64_out_of_float16", "key_value_dtypes_differ"])
def test_16_bit_errors(tmp_path, rng, args, message):
    half = rng.standard_normal((3, 8)).astype(np.float16)
    q, k = save(tmp_path, "in_q.npy", half), save(tmp_path, "in_k.npy", half)
    v = save(tmp_path, "in_v.npy", half if args else half.astype(np.float32))
    code = 2 if args else 1
    assert_fails(tmp_path, ["run", "--query", q, "--key", k, "--value", v, *args], message,
                 code=code)


def test_float64_out_dtype_of_float64_inputs_is_refused_for_float32(tmp_path, rng):
    x = save(tmp_path, "in_x.npy", rng.standard_normal((3, 8)))
    assert_fails(tmp_path, ["run", "--query", x, "--key", x, "--value", x, "--out-dtype",
                            "float16"], r"^sdpa: run: --out-dtype is float16 but the query is "
                 r"float64; float64 inputs give a float64 output$", code=2)


@pytest.mark.parametrize("dtype", ["bf16", "f16", "float32"])
def test_bench_dtype(dtype):
    result = run("bench", "--grid", "tiny", "--min-time", "0", "--threads", "1", "--json",
                 "--dtype", dtype)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dtype"] == {"bf16": "bfloat16", "f16": "float16"}.get(dtype, dtype)
    row = next(r for r in report["rows"] if r["q_len"] == 64 and r["causal"] == "none")
    # the least traffic: Q, K, V and out of 2·64·32 elements each, of the dtype's size
    size = {"bf16": 2, "f16": 2, "float32": 4}[dtype]
    assert row["gbytes_per_second"] * row["seconds_median"] == pytest.approx(
        4 * 2 * 64 * 32 * size * 1e-9, rel=1e-4)
