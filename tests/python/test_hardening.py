"""The package inside real programs (issue 19): fork after multi-threaded calls, the GIL released
while computing, Ctrl-C interrupting a long call, empty rows with sinks in the backward, and
dropout_p = 1."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import sdpa


def _problem(length=256, heads=8, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, length, dim), dtype=np.float32) for _ in range(3))


def _child_computes(args):
    q, k, v, expected = args
    return bool(np.array_equal(sdpa.attention(q, k, v), expected))


@pytest.fixture
def two_threads():
    sdpa.set_num_threads(2)
    yield
    sdpa.set_num_threads(0)


def test_os_fork_child_computes_after_a_two_thread_call(two_threads):
    q, k, v = _problem()
    expected = sdpa.attention(q, k, v)  # starts the pool's threads
    assert "threads=2" in sdpa.explain(q, k, v)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            code = 0 if all(np.array_equal(sdpa.attention(q, k, v), expected)
                            for _ in range(3)) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its first call")
    assert os.read(read, 1) == b"\x00"
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert np.array_equal(sdpa.attention(q, k, v), expected)  # the parent still computes


def test_multiprocessing_fork_pool_computes_after_a_two_thread_call(two_threads):
    q, k, v = _problem()
    expected = sdpa.attention(q, k, v)
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        result = pool.map_async(_child_computes, [(q, k, v, expected)] * 4)
        assert result.get(timeout=60) == [True] * 4


def test_gil_is_released_while_computing(two_threads):
    q, k, v = _problem(length=2048)
    ticks = []
    running = threading.Event()
    stop = threading.Event()

    def count():
        running.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    counter = threading.Thread(target=count)
    counter.start()
    running.wait()
    start = len(ticks)
    began = time.perf_counter()
    for _ in range(3):
        sdpa.attention(q, k, v)
    ended = time.perf_counter()
    stop.set()
    counter.join()
    during = [t for t in ticks[start:] if began < t < ended]
    # The other Python thread kept running while the calls computed (with the GIL held it could
    # not have ticked at all until they returned).
    assert len(during) >= 5, (len(during), ended - began)


def test_ctrl_c_interrupts_a_long_call(tmp_path):
    """A child Python runs a call that would take minutes (the float64 reference on a long
    sequence) and gets SIGINT: it must raise KeyboardInterrupt within a few seconds."""
    script = tmp_path / "long_call.py"
    script.write_text(textwrap.dedent("""
        import sys, time, numpy as np, sdpa
        q = np.random.default_rng(0).standard_normal((1, 8, 8192, 64))  # ~40 s in full
        print("start", flush=True)
        began = time.monotonic()
        try:
            sdpa.attention(q, q, q, backend="reference")
        except KeyboardInterrupt:
            print(f"interrupted {time.monotonic() - began:.3f}", flush=True)
            sys.exit(0)
        print("finished", flush=True)
        sys.exit(1)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert child.stdout.readline().strip() == "start"
        time.sleep(0.5)  # inside the call
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out
    assert out.startswith("interrupted"), out
    # The whole call takes about 40 s here; interrupted means within a few polls of the signal.
    assert float(out.split()[1]) < 10, out


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_rows_with_sinks_give_finite_gradients(backend, dtype):
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 24, 8)).astype(dtype) for _ in range(3))
    mask = np.ones((24, 24), dtype=bool)
    mask[[2, 17]] = False  # rows 2 and 17 see no key
    q[:, :, [2, 17]] = np.nan  # padding rows often hold garbage
    sinks = [0.5, -1.25]
    out, lse = sdpa.attention(q, k, v, mask=mask, sinks=sinks, return_lse=True, backend=backend)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dout[:, :, [2, 17]] = np.nan
    grads = sdpa.attention_backward(dout, q, k, v, out, lse, mask=mask, sinks=sinks,
                                    backend=backend)
    assert len(grads) == 4
    for g in grads:
        assert np.all(np.isfinite(g))
    assert np.all(grads[0][:, :, [2, 17]] == 0)
    np.testing.assert_array_equal(out[:, :, [2, 17]], 0)
    np.testing.assert_array_equal(lse[0, :, 2], np.array(sinks, dtype=dtype))


def test_empty_rows_with_sinks_match_torch_autograd_of_the_formula():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    H, L, D = 2, 12, 8
    q, k, v = (rng.standard_normal((1, H, L, D)) for _ in range(3))
    mask = np.ones((L, L), dtype=bool)
    mask[5] = False
    sinks = np.array([0.3, -0.7])
    dout = rng.standard_normal((1, H, L, D))

    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    ts = torch.tensor(sinks, requires_grad=True)
    scores = tq @ tk.transpose(-1, -2) / np.sqrt(D)
    scores = scores.masked_fill(~torch.tensor(mask), float("-inf"))
    sink_col = ts.view(1, H, 1, 1).expand(1, H, L, 1)
    weights = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :L]
    (weights @ tv * torch.tensor(dout)).sum().backward()

    out, lse = sdpa.attention(q, k, v, mask=mask, sinks=sinks, return_lse=True)
    dq, dk, dv, ds = sdpa.attention_backward(dout, q, k, v, out, lse, mask=mask, sinks=sinks)
    np.testing.assert_allclose(out, (weights @ tv).detach().numpy(), atol=1e-12)
    for ours, theirs in ((dq, tq), (dk, tk), (dv, tv), (ds, ts)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), atol=1e-11)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_dropout_one_drops_every_weight(backend):
    q, k, v = _problem(length=64, heads=2, dim=16)
    out, lse = sdpa.attention(q, k, v, dropout_p=1.0, seed=3, return_lse=True, backend=backend)
    np.testing.assert_array_equal(out, 0)
    _, undropped_lse = sdpa.attention(q, k, v, return_lse=True, backend=backend)
    np.testing.assert_array_equal(lse, undropped_lse)  # lse is that of the weights before dropout
    grads = sdpa.attention_backward(np.ones_like(out), q, k, v, out, lse, dropout_p=1.0, seed=3,
                                    backend=backend)
    for g in grads:
        np.testing.assert_array_equal(g, 0)
