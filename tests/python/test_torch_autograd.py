"""sdpa.torch.attention, a torch.autograd.Function: its gradients against torch.autograd through
torch.nn.functional.scaled_dot_product_attention, gradcheck, and a small model trained with it.
Skipped when torch is not installed, except the check that importing sdpa.torch then fails
clearly."""

import contextlib
import dataclasses
import doctest
import importlib
import io
import pathlib
import re
import sys
from typing import Optional, Tuple

import numpy as np
import pytest

import sdpa

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def test_import_without_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "sdpa.torch", raising=False)
    monkeypatch.delattr(sdpa, "torch", raising=False)
    with pytest.raises(ImportError, match=r"^sdpa.torch needs PyTorch, which could not be "
                                          r"imported .*pip install torch"):
        importlib.import_module("sdpa.torch")
    assert sdpa.attention(np.ones((2, 4)), np.ones((3, 4)), np.ones((3, 2))).shape == (2, 2)


if torch is not None:
    import sdpa.torch  # noqa: E402  (after the check above, which must run without torch)

    # PyTorch's CPU kernels and ours round differently. float32: gradients of O(1-10) agree to a
    # few ulp (measured <= 5e-6 at these sizes); float64: to a few ulp of float64.
    TOLERANCE = {torch.float32: 5e-5, torch.float64: 1e-10}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    query: Tuple[int, ...]
    key: Tuple[int, ...]
    value: Tuple[int, ...]
    causal: Optional[str] = None
    mask: Optional[Tuple[int, ...]] = None
    mask_kind: Optional[str] = None  # "bool", "additive", or "sparse" (bool with empty rows)
    scale: Optional[float] = None


CASES = [
    Case("2d", (5, 8), (7, 8), (7, 3)),
    Case("4d Dv != D", (2, 3, 17, 16), (2, 3, 19, 16), (2, 3, 19, 5)),
    Case("scale", (2, 4, 8), (2, 6, 8), (2, 6, 8), scale=0.7),
    Case("top_left Lq < Lkv", (2, 3, 5, 16), (2, 3, 9, 16), (2, 3, 9, 8), causal="top_left"),
    Case("top_left Lq > Lkv", (2, 3, 9, 16), (2, 3, 5, 16), (2, 3, 5, 8), causal="top_left"),
    Case("bottom_right Lq < Lkv", (2, 3, 5, 16), (2, 3, 9, 16), (2, 3, 9, 8),
         causal="bottom_right"),
    Case("bottom_right Lq > Lkv", (2, 3, 9, 16), (2, 3, 5, 16), (2, 3, 5, 8),
         causal="bottom_right"),
    Case("gqa", (2, 8, 6, 16), (2, 2, 6, 16), (2, 2, 6, 16), causal="top_left"),
    Case("mqa bottom_right", (1, 4, 3, 8), (1, 1, 9, 8), (1, 1, 9, 4), causal="bottom_right"),
    Case("bool mask", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(5, 7), mask_kind="bool"),
    Case("bool padding mask", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(2, 1, 1, 7),
         mask_kind="bool"),
    Case("additive mask per head", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8), mask=(3, 5, 7),
         mask_kind="additive"),
    Case("fully masked rows", (2, 5, 8), (2, 7, 8), (2, 7, 8), mask=(5, 7), mask_kind="sparse"),
    Case("mask + causal + gqa", (2, 4, 6, 8), (2, 2, 9, 8), (2, 2, 9, 8), causal="bottom_right",
         mask=(4, 6, 9), mask_kind="additive"),
    Case("bool mask + top_left", (2, 3, 6, 8), (2, 3, 4, 8), (2, 3, 4, 8), causal="top_left",
         mask=(2, 1, 1, 4), mask_kind="bool"),
    Case("tiles + 1", (1, 2, 97, 16), (1, 1, 129, 16), (1, 1, 129, 8), causal="top_left"),
]


def make_inputs(case, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(s, generator=gen, dtype=dtype) for s in (case.query, case.key,
                                                                     case.value))
    dout = torch.randn(case.query[:-1] + case.value[-1:], generator=gen, dtype=dtype)
    mask = None
    if case.mask_kind == "bool":
        mask = torch.rand(case.mask, generator=gen) < 0.7
    elif case.mask_kind == "additive":
        mask = torch.randn(case.mask, generator=gen, dtype=dtype)
        mask[torch.rand(case.mask, generator=gen) < 0.2] = -float("inf")
    elif case.mask_kind == "sparse":
        mask = torch.rand(case.mask, generator=gen) < 0.3
        mask[1] = False
    return q, k, v, dout, mask


def torch_arguments(case, mask):
    """PyTorch's (attn_mask, is_causal) for `case`. PyTorch's is_causal is top-left only and it
    refuses an attn_mask next to it, so other combinations put the causal rule into the mask."""
    if case.causal is None:
        return mask, False
    if case.causal == "top_left" and mask is None:
        return None, True
    q_len, kv_len = case.query[-2], case.key[-2]
    diagonal = 0 if case.causal == "top_left" else kv_len - q_len
    causal = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=diagonal)
    if mask is None:
        return causal, False
    if mask.dtype == torch.bool:
        return mask & causal, False
    return mask.masked_fill(~causal, -float("inf")), False


def torch_gradients(case, q, k, v, dout, mask):
    """out and (dq, dk, dv) from PyTorch's own scaled_dot_product_attention and autograd."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    attn_mask, is_causal = torch_arguments(case, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                         scale=case.scale,
                                         enable_gqa=q.dim() >= 3 and q.shape[-3] != k.shape[-3])
    return out.detach(), torch.autograd.grad(out, (q, k, v), dout)


def assert_tensors_close(actual, expected, tol, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    difference = (actual - expected).abs()
    bound = tol + tol * expected.abs()
    bad = ~(difference <= bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} differ, first at "
                           f"{tuple(bad.nonzero()[0].tolist())}: max difference "
                           f"{difference.max().item():.3g}")


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gradients_match_torch(case, dtype):
    dtype = getattr(torch, dtype)
    q, k, v, dout, mask = make_inputs(case, dtype)
    expected_out, expected_grads = torch_gradients(case, q, k, v, dout, mask)

    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = sdpa.torch.attention(q, k, v, mask=mask, causal=case.causal, scale=case.scale)
    assert isinstance(out, torch.Tensor) and out.requires_grad
    out.backward(dout)
    tol = TOLERANCE[dtype]
    assert_tensors_close(out.detach(), expected_out, tol, "out")
    for name, x, expected in zip(("query", "key", "value"), (q, k, v), expected_grads):
        assert_tensors_close(x.grad, expected, tol, f"{name}.grad")


@needs_torch
def test_gradcheck_float64():
    """torch.autograd.gradcheck: our backward against finite differences of our forward, on a
    tiny GQA case with a bottom-right causal rule and an additive mask."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    mask[2, 0] = -float("inf")

    def function(q, k, v):
        return sdpa.torch.attention(q, k, v, mask=mask, causal="bottom_right")

    assert torch.autograd.gradcheck(function, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


@needs_torch
def test_views_of_a_packed_projection_get_their_gradients():
    """q, k, v as strided views of one fused projection (B, L, 3, H, D): gradients flow back into
    the packed tensor like PyTorch's."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 6, 3, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(2, 4, 6, 8, generator=gen, dtype=torch.float64)
    grads = []
    for attention in (
            lambda q, k, v: sdpa.torch.attention(q, k, v, causal="top_left"),
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D) views
        assert not q.is_contiguous()
        grads.append(torch.autograd.grad(attention(q, k, v), qkv, dout)[0])
    assert_tensors_close(grads[0], grads[1], 1e-10, "qkv.grad")


@needs_torch
def test_only_requested_gradients_and_no_mask_gradient():
    q = torch.randn(2, 5, 8, requires_grad=True)
    k, v = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    mask = torch.randn(5, 7, requires_grad=True)  # gets no gradient
    sdpa.torch.attention(q, k, v, mask=mask).sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape
    assert k.grad is None and v.grad is None and mask.grad is None
    # nothing requires grad: a plain forward, no graph
    out = sdpa.torch.attention(q.detach(), k, v)
    assert not out.requires_grad and out.grad_fn is None


@needs_torch
def test_inputs_are_read_in_place_and_not_modified():
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    before = [x.detach().clone() for x in (q, k, v)]
    out = sdpa.torch.attention(q, k, v, causal="top_left")
    out.backward(torch.ones_like(out))  # a contiguous grad_out; ones_like(out).expand works too
    for x, b in zip((q, k, v), before):
        assert torch.equal(x.detach(), b)
    q.grad = None
    out = sdpa.torch.attention(q, k, v, causal="top_left")
    out.sum().backward()  # grad_out is an expanded (stride 0) tensor here
    expected = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum(), q)[0]
    assert_tensors_close(q.grad, expected, 5e-5, "query.grad")


@needs_torch
def test_changing_a_saved_tensor_in_place_is_caught():
    """The forward saves query, key, value and out with save_for_backward: changing one of them
    in place before backward is PyTorch's usual error, not silently wrong gradients."""
    leaf = torch.randn(3, 4, requires_grad=True)
    q = leaf * 1.0
    out = sdpa.torch.attention(q, leaf, leaf)
    q.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@needs_torch
def test_double_backward_is_refused():
    q, k, v = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    loss = (sdpa.torch.attention(q, k, v) ** 2).sum()  # grad_out = 2·out depends on q
    (dq,) = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        dq.sum().backward()


@needs_torch
def test_no_key_visible_gives_zero_gradients():
    q, k, v = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    q_long = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    out = sdpa.torch.attention(q_long, k, v, causal="bottom_right")  # rows 0, 1 see no key
    out.sum().backward()
    assert torch.all(out[:2] == 0) and torch.all(q_long.grad[:2] == 0)
    assert torch.all(q_long.grad[2] == 0)  # sees key 0 only: its weight is 1 whatever q is
    assert torch.all(q_long.grad[3:] != 0)


@needs_torch
@pytest.mark.parametrize("arguments, error, match", [
    (dict(query=lambda t: t.to(torch.complex64)), TypeError,
     r"^sdpa: query.dtype is torch.complex64 but must be torch.float32, torch.float64, "
     r"torch.bfloat16 or torch.float16"),
    (dict(key=lambda t: t.long()), TypeError,
     r"^sdpa: key.dtype is torch.int64 but must be torch.float32, torch.float64, "
     r"torch.bfloat16 or torch.float16"),
    (dict(value=lambda t: t.double()), TypeError,
     r"^sdpa: value.dtype is float64 but query.dtype is float32"),
    (dict(value=lambda t: t.numpy()), TypeError,
     r"^sdpa: value is a ndarray but must be a torch.Tensor"),
    (dict(query=lambda t: t.to("meta")), ValueError,
     r"^sdpa: query is on device meta but must be on the CPU"),
    (dict(key=lambda t: t[:, :2]), ValueError,
     r"^sdpa: key.shape\[1\] \(head_dim\) is 2 but query.shape\[1\] is 4"),
    (dict(mask=lambda t: torch.ones(2, 3, dtype=torch.bool)), ValueError,
     r"^sdpa: mask.shape\[0\] is 2 but must be 1 or 3 \(q_len\)"),
    (dict(mask=lambda t: torch.ones(3, 3, dtype=torch.complex64)), TypeError,
     r"^sdpa: mask.dtype is complex64 but must be bool"),
    (dict(causal=lambda t: True), TypeError,
     r"^sdpa: causal is True but must be None, 'top_left' or 'bottom_right'"),
    (dict(causal=lambda t: "diagonal"), ValueError, r"^sdpa: causal is 'diagonal' but must be"),
    (dict(scale=lambda t: float("inf")), ValueError,
     r"^sdpa: scale is inf but must be finite"),
    (dict(backend=lambda t: "gpu"), ValueError, r"^sdpa: backend is 'gpu' but must be"),
])
def test_errors(arguments, error, match):
    t = torch.ones(3, 4, requires_grad=True)
    call = dict(query=t, key=t, value=t, mask=None, causal=None, scale=None, backend=None)
    for name, make in arguments.items():
        call[name] = make(t.detach()) if name in ("query", "key", "value") else make(t)
    q, k, v = call.pop("query"), call.pop("key"), call.pop("value")
    with pytest.raises(error, match=match):
        sdpa.torch.attention(q, k, v, **call)


@needs_torch
def test_numpy_backward_takes_tensors():
    """sdpa.attention_backward reads (detached) torch tensors through DLPack."""
    q, k, v = (torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    dout = torch.randn_like(out)
    _, lse = sdpa.attention(q.detach(), k.detach(), v.detach(), return_lse=True)
    grads = sdpa.attention_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse)
    for g, expected in zip(grads, torch.autograd.grad(out, (q, k, v), dout)):
        assert isinstance(g, np.ndarray)
        assert_tensors_close(torch.from_numpy(g), expected, 1e-10, "gradient")


@needs_torch
def test_docs_examples_with_torch():
    """The `py` blocks of docs/python.md (its PyTorch examples; test_docs.py runs the `python`
    blocks, also without PyTorch) run and print what their comments say."""
    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"
    if not doc.exists():
        pytest.skip("docs/python.md is not next to the tests")
    blocks = re.findall(r"```py\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(block, str(doc), "exec"), {})
        for shown in re.findall(r"print\(.*\)  # (.*)", block):
            assert shown in stdout.getvalue(), f"{shown!r} not printed by:\n{block}"


@needs_torch
def test_docstring_examples():
    result = doctest.testmod(sdpa.torch, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0, result


class ToyAttention(torch.nn.Module if torch is not None else object):
    """One causal self-attention layer with a fused QKV projection, learning to predict the
    running mean of its input (a target that causal attention can represent exactly)."""

    def __init__(self, attention, width=16, heads=2):
        super().__init__()
        self.attention, self.heads = attention, heads
        self.qkv = torch.nn.Linear(width, 3 * width, dtype=torch.float64)
        self.proj = torch.nn.Linear(width, width, dtype=torch.float64)

    def forward(self, x):  # x (B, L, width)
        batch, seq, width = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.heads, width // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D) views
        out = self.attention(q, k, v).transpose(1, 2).reshape(batch, seq, width)
        return self.proj(out)


@needs_torch
def test_training_loop_lowers_the_loss_like_torch():
    """A few steps of SGD on the toy layer: the loss falls, and every step's loss equals the one
    of the same model trained with PyTorch's own attention."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 12, 16, generator=gen, dtype=torch.float64)
    target = x.cumsum(dim=1) / torch.arange(1, 13, dtype=torch.float64).view(1, 12, 1)

    losses = {}
    for name, attention in (
            ("sdpa", lambda q, k, v: sdpa.torch.attention(q, k, v, causal="top_left")),
            ("torch", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))):
        torch.manual_seed(0)
        model = ToyAttention(attention)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        losses[name] = []
        for _ in range(30):
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), target)
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    assert losses["sdpa"][-1] < 0.3 * losses["sdpa"][0], losses["sdpa"]
    np.testing.assert_allclose(losses["sdpa"], losses["torch"], rtol=1e-8)
