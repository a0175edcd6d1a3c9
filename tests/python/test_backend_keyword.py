"""The backend= keyword of sdpa.attention and sdpa.explain (options.backend in C++): it picks the
implementation per call, above the SDPA_BACKEND environment variable."""

import numpy as np
import pytest

import sdpa


def _operands(rng, dtype=np.float32):
    q = rng.standard_normal((2, 4, 9, 16)).astype(dtype)
    k = rng.standard_normal((2, 2, 11, 16)).astype(dtype)
    v = rng.standard_normal((2, 2, 11, 8)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_reference_and_cpu_agree(causal, rng):
    q, k, v = _operands(rng)
    reference, reference_lse = sdpa.attention(q, k, v, causal=causal, return_lse=True,
                                              backend="reference")
    cpu, cpu_lse = sdpa.attention(q, k, v, causal=causal, return_lse=True, backend="cpu")
    assert reference.dtype == cpu.dtype == np.float32
    np.testing.assert_allclose(cpu, reference, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(cpu_lse, reference_lse, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("backend, used", [
    (None, "cpu"), ("auto", "cpu"), ("cpu", "cpu"), ("reference", "reference"),
])
def test_explain_names_the_backend(backend, used, monkeypatch, rng):
    monkeypatch.delenv("SDPA_BACKEND", raising=False)
    q, k, v = _operands(rng)
    assert f"backend={used} " in sdpa.explain(q, k, v, backend=backend)


def test_keyword_overrides_environment(monkeypatch, rng):
    q, k, v = _operands(rng)
    monkeypatch.setenv("SDPA_BACKEND", "reference")
    assert "backend=reference" in sdpa.explain(q, k, v)
    assert "backend=cpu" in sdpa.explain(q, k, v, backend="cpu")


def test_bad_backend_name(rng):
    q, k, v = _operands(rng)
    with pytest.raises(ValueError, match=r"backend is 'gpu' but must be"):
        sdpa.attention(q, k, v, backend="gpu")
    with pytest.raises(TypeError, match=r"backend is 1 but must be"):
        sdpa.attention(q, k, v, backend=1)
