"""sdpa.transformers: sdpa's attention inside Hugging Face transformers models.

    import sdpa.transformers             # registers attn_implementation="sdpa_cpu"
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sdpa_cpu")
    model.set_attn_implementation("sdpa_cpu")          # or switch a loaded model

Importing this module calls register(), which puts attention_forward into transformers'
AttentionInterface (the ALL_ATTENTION_FUNCTIONS dict in 4.48-4.49) and transformers' own boolean
mask builder (sdpa_mask, the one the "sdpa" implementation uses) into its AttentionMaskInterface
(4.53 on) under the name "sdpa_cpu", and lets models that set _supports_sdpa = False (Gemma 2,
GPT-OSS) take that name (_accept_name_for_every_model). Every attention layer that calls the
interface (Llama, Mistral, Qwen2, Gemma 2/3, GPT-OSS, BERT from 4.53 on, most current models)
then computes with sdpa.torch.attention: forward and backward (autograd), prefill and each
decode step of generate() with a DynamicCache.

How transformers' arguments map onto sdpa's (transformers/integrations/sdpa_attention.py is
the contract: the same arguments mean the same thing as for attn_implementation="sdpa"):

    query (B, H, Lq, D), key, value (B, Hkv, Lkv, D)   read in place; GQA when H % Hkv == 0
    attention_mask None, q_len > 1, causal module       causal="top_left" (keys past Lq dropped,
                                                        as "sdpa" does)
    attention_mask None otherwise                       no mask (decode: the one query sees all)
    attention_mask bool (True = attend) or additive     mask=, read in place, broadcast; plus the
      float, broadcastable to (B, H, Lq, Lkv)           band it implies as window= (below)
    scaling                                             scale= (None: 1/sqrt(D))
    dropout (> 0 only in training)                      dropout_p=, seed drawn from torch's RNG
    softcap (Gemma 2)                                   softcap=
    s_aux (GPT-OSS sinks, differentiable)               sinks=
    sliding_window                                      not needed: the model's mask has the
                                                        window (transformers' mask functions
                                                        are the definition, off-by-one included)
    returns                                             (out.transpose(1, 2) (B, Lq, H, Dv), None)

The band of a mask. sdpa skips whole tiles outside `causal` and `window`, but must read every
score of a mask. So for a mask it finds the band the mask already implies: over the rows with a
visible key, left = max(diag - first visible key) and right = max(last visible key - diag),
diag = i + Lkv - Lq (bottom-right). Passing window=(left, right) as well removes only keys the
mask removes, so the result is the same, and causal or sliding-window masks (with padding) cost
what causal or windowed attention costs. A bool mask's removed keys are its False entries; an
additive mask's are its entries <= finfo(dtype).min (transformers' eager masks), used only when
every row keeps a key above that (an entry of finfo.min is then exp-underflow, exactly 0; a row
of only finfo.min entries would be a uniform average). The band costs a few passes over the
mask and is kept on the mask tensor, which transformers shares between layers.

Fallback. What sdpa cannot compute goes, with a warning the first time for each reason, to
transformers' "sdpa" (torch.nn.functional.scaled_dot_product_attention), or to the model's own
eager attention when the call has softcap or s_aux, which "sdpa" cannot do: tensors not on the
CPU, a dtype sdpa does not take (it takes float32, float64, bfloat16 and float16 since issue 13;
probed once per dtype, so a build without them falls back), key and value of another dtype than query, a
mask that is not a CPU tensor of bool or the query's dtype broadcastable to the scores,
position_bias, a batch that broadcasts, torch.compile and jit tracing. call_counts() tells how
many calls went each way.
"""

from __future__ import annotations

import collections
import functools
import importlib
import sys
import threading
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

try:
    import torch
    from transformers import modeling_utils
    from transformers.modeling_utils import PreTrainedModel
except ImportError as e:
    raise ImportError(
        f"sdpa.transformers needs PyTorch and Hugging Face transformers >= 4.48, which could not "
        f"be imported ({e}); install them with `pip install transformers torch` (or `pip install "
        "sdpa[transformers]`). The rest of sdpa works without them.") from e

from . import torch as sdpa_torch



def _optional(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# transformers >= 4.50 registers attention functions with AttentionInterface, 4.48 and 4.49 in
# the dict ALL_ATTENTION_FUNCTIONS. transformers >= 4.53 builds the masks through
# AttentionMaskInterface; older versions give every custom implementation a 4-D additive mask.
AttentionInterface: Any = getattr(modeling_utils, "AttentionInterface", None)
AttentionMaskInterface: Any = _optional("transformers.masking_utils", "AttentionMaskInterface")
sdpa_mask: Any = _optional("transformers.masking_utils", "sdpa_mask")
sdpa_attention_forward: Any = _optional("transformers.integrations.sdpa_attention",
                                        "sdpa_attention_forward")

__all__ = ["NAME", "attention_forward", "call_counts", "register", "reset_call_counts"]

NAME = "sdpa_cpu"

_lock = threading.Lock()
_counts: "collections.Counter[str]" = collections.Counter()
_warned: set = set()


def call_counts() -> Dict[str, int]:
    """How many attention calls attention_forward computed with sdpa (``"sdpa"``) and how many it
    passed on (``"fallback"``, and ``"fallback: <reason>"`` for each reason) since the last
    reset_call_counts().

    >>> import sdpa.transformers
    >>> sdpa.transformers.reset_call_counts()
    >>> sdpa.transformers.call_counts()
    {'sdpa': 0, 'fallback': 0}
    """
    with _lock:
        return {"sdpa": _counts["sdpa"], "fallback": _counts["fallback"],
                **{k: v for k, v in sorted(_counts.items()) if k.startswith("fallback: ")}}


def reset_call_counts() -> None:
    """Sets the counts of call_counts() to zero."""
    with _lock:
        _counts.clear()


def _warn_once(kind: str, message: str) -> None:
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    warnings.warn(f"sdpa.transformers: {message}", RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# What sdpa can compute.


@functools.lru_cache(maxsize=None)
def _library_takes(dtype: torch.dtype, backward: bool) -> bool:
    """Whether sdpa.torch.attention computes `dtype` (and its gradient, with `backward`): asked
    once per dtype with a tiny call, so that a dtype the library learns later is used at once."""
    with torch.inference_mode(False), torch.enable_grad():
        q = torch.ones(1, 1, 2, 8, dtype=dtype, requires_grad=backward)
        try:
            out = sdpa_torch.attention(q, q, q)
            if backward:
                out.sum().backward()
        except (TypeError, ValueError, RuntimeError):
            return False
    return True


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", None) is not None:
        if compiler.is_compiling():
            return True
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def _broadcastable(shape: Tuple[int, ...], to: Tuple[int, ...]) -> bool:
    if len(shape) > len(to):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], to[::-1]))


def _unsupported(query, key, value, mask, kwargs) -> Optional[Tuple[str, str]]:
    """(kind, what) when sdpa cannot compute this call, else None. Checked before anything is
    computed, so a call either goes through sdpa completely or not at all."""
    if _compiling():
        return "compile", "torch.compile or jit tracing is active"
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            where = x.device if isinstance(x, torch.Tensor) else type(x).__name__
            return "device", f"{name} is on {where}, and sdpa computes on the CPU"
        if x.ndim != 4:
            return "shape", f"{name} has {x.ndim} dims, not the 4 of (batch, heads, seq, dim)"
    if key.dtype != query.dtype or value.dtype != query.dtype:
        return "dtype", (f"query, key and value are {query.dtype}, {key.dtype}, {value.dtype}; "
                         "sdpa takes one dtype")
    if not _library_takes(query.dtype, backward=False):
        return "dtype", f"this build of sdpa does not compute {query.dtype}"
    sinks = kwargs.get("s_aux")
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (query, key, value, sinks))
    if needs_grad and not _library_takes(query.dtype, backward=True):
        return "dtype", f"this build of sdpa has no gradient for {query.dtype}"
    batch, heads, q_len = query.shape[:3]
    if key.shape[0] != batch or value.shape[0] != batch or heads % key.shape[1] != 0:
        return "shape", (f"query {tuple(query.shape)} and key {tuple(key.shape)} need "
                         "broadcasting, which sdpa.attention does not do")
    if kwargs.get("position_bias") is not None:
        return "position_bias", "position_bias is given"
    if sinks is not None and (not isinstance(sinks, torch.Tensor) or sinks.device.type != "cpu"):
        return "device", "s_aux is not a CPU tensor"
    if mask is not None:
        scores = (batch, heads, q_len, key.shape[2])
        if not isinstance(mask, torch.Tensor) or mask.device.type != "cpu":
            return "mask", f"the attention mask is a {type(mask).__name__} not on the CPU"
        if mask.ndim == 0:
            return "mask", "the attention mask is a 0-d tensor"
        if not (mask.dtype == torch.bool or mask.dtype == query.dtype
                or (mask.dtype == torch.float32 and query.dtype == torch.float64)):
            return "mask", f"the attention mask is {mask.dtype} for {query.dtype} inputs"
        # A mask for more keys than the cache holds (transformers < 4.53) is cut to Lkv.
        shape = tuple(mask.shape[:-1]) + (min(mask.shape[-1], key.shape[2]),)
        if not _broadcastable(shape, scores):
            return "mask", (f"the attention mask's shape {tuple(mask.shape)} does not broadcast "
                            f"to the scores {scores}")
    return None


# ---------------------------------------------------------------------------------------------
# The band a mask implies (the module docstring explains why).


def _mask_band(mask: torch.Tensor, q_len: int, kv_len: int) -> Optional[Tuple[int, int]]:
    """(left, right), both >= 0: every kept entry (i, j) of `mask` has
    diag - left <= j <= diag + right, diag = i + kv_len - q_len; None when no band can be used
    (no row keeps a key, or an additive mask has a row of removed entries only)."""
    if mask.dtype == torch.bool:
        keep = mask
    else:
        keep = mask > torch.finfo(mask.dtype).min
    keep = keep.reshape((1,) * (4 - keep.ndim) + tuple(keep.shape))
    if keep.shape[-1] == 1:
        keep = keep.expand(*keep.shape[:-1], kv_len)
    rows = keep.shape[-2]  # q_len, or 1 for a mask broadcast over the query rows
    as_bytes = keep.view(torch.uint8)  # same element size: a view, whatever the strides
    has = as_bytes.amax(dim=-1).bool()  # (.., rows): rows that keep a key
    if not bool(has.any()):
        return None
    if mask.dtype != torch.bool and not bool(has.all()):
        return None  # a row of finfo.min entries averages all keys: only the mask gives that
    first = as_bytes.argmax(dim=-1)  # argmax returns the first maximal index
    last = (kv_len - 1) - as_bytes.flip(-1).argmax(dim=-1)
    offset = kv_len - q_len
    if rows == q_len:
        diag = torch.arange(q_len) + offset
        diag_high = diag_low = diag
    else:  # one mask row for every query row: the extreme diagonals bound it
        diag_high = torch.full((1,), q_len - 1 + offset)
        diag_low = torch.full((1,), offset)
    left = int(torch.where(has, diag_high - first, torch.iinfo(torch.int64).min).max())
    right = int(torch.where(has, last - diag_low, torch.iinfo(torch.int64).min).max())
    return max(left, 0), max(right, 0)


def _band_options(mask: torch.Tensor, q_len: int, kv_len: int) -> Dict[str, Any]:
    """causal= or window= for the band of `mask[..., :kv_len]`, remembered on `mask`
    (transformers passes one mask object to every layer of a forward)."""
    # Inference tensors have no version counter to tell an in-place change: found every time.
    key = None if mask.is_inference() else (mask._version, q_len, kv_len)
    cached = getattr(mask, "_sdpa_band", None)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    band = _mask_band(mask[..., :kv_len], q_len, kv_len)
    options: Dict[str, Any] = {}
    if band is not None:
        left, right = band
        # A side that cannot remove a key is left out: the most left needs is the last row's
        # diagonal (kv_len - 1); the most right needs reaches from the first row's diagonal.
        left_side = left if left < kv_len - 1 else None
        right_side = right if right < q_len - 1 else None
        if left_side is None and right_side == 0:
            options["causal"] = "bottom_right"
        elif left_side is not None or right_side is not None:
            options["window"] = (left_side, right_side)
    if key is not None:
        try:
            setattr(mask, "_sdpa_band", (key, options))
        except (AttributeError, RuntimeError):  # a tensor that takes no attributes: recompute
            pass
    return options


# ---------------------------------------------------------------------------------------------
# The attention function.


def _dropout_seed() -> int:
    """A seed for sdpa's dropout drawn from torch's default generator, so torch.manual_seed
    makes a training run repeatable (sdpa's own draw would come from secrets.randbits)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None,
                      **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """transformers' attention function for attn_implementation="sdpa_cpu": the arguments of
    transformers.integrations.sdpa_attention.sdpa_attention_forward (plus ``softcap`` and
    ``s_aux``), computed by sdpa.torch.attention.

    - ``query`` ``(B, H, Lq, D)``, ``key`` ``(B, Hkv, Lkv, D)``, ``value`` ``(B, Hkv, Lkv, Dv)``.
    - ``attention_mask``: None, or bool (True = attend) or additive float, broadcastable to
      ``(B, H, Lq, Lkv)``.
    - ``is_causal``: default ``module.is_causal``; applies, top-left, only without a mask and
      with Lq > 1, as in transformers' "sdpa".

    Returns ``(out, None)``, ``out`` ``(B, Lq, H, Dv)`` contiguous. Calls sdpa cannot compute
    go to transformers' "sdpa" or the model's eager attention (module docstring).
    """
    unsupported = _unsupported(query, key, value, attention_mask, kwargs)
    if unsupported is not None:
        return _fallback(unsupported, module, query, key, value, attention_mask,
                         dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    if kwargs.get("output_attentions", False):
        _warn_once("output_attentions", "output_attentions=True: sdpa returns no attention "
                   "weights (as transformers' \"sdpa\"); use attn_implementation=\"eager\"")
    q_len, kv_len = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    options: Dict[str, Any] = {"scale": scaling}
    if attention_mask is None:
        if is_causal and q_len > 1:
            options["causal"] = "top_left"
            # transformers' "sdpa" crops these keys too: top-left, row i < Lq sees j <= i only.
            key, value = key[:, :, :q_len], value[:, :, :q_len]
    else:
        # transformers < 4.53 may build the mask for more keys than the cache holds; its own
        # attention functions dropped the rest, as here.
        mask = attention_mask[..., :kv_len] if attention_mask.shape[-1] > kv_len else attention_mask
        options["mask"] = mask
        options.update(_band_options(attention_mask, q_len, kv_len))
    if kwargs.get("softcap") is not None:
        options["softcap"] = kwargs["softcap"]
    if kwargs.get("s_aux") is not None:
        options["sinks"] = kwargs["s_aux"]
    if dropout:
        options.update(dropout_p=dropout, seed=_dropout_seed())
    out = sdpa_torch.attention(query, key, value, **options)
    with _lock:
        _counts["sdpa"] += 1
    return out.transpose(1, 2).contiguous(), None


# ---------------------------------------------------------------------------------------------
# Fallback.


def _model_eager_attention(module: torch.nn.Module) -> Optional[Callable[..., Any]]:
    """The eager_attention_forward of the module's modeling file (it knows its softcap/sinks)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _additive_mask(mask: Optional[torch.Tensor], query: torch.Tensor, key: torch.Tensor,
                   is_causal: bool) -> Optional[torch.Tensor]:
    """The mask as eager attention adds it: bool -> 0 / finfo.min; None with a causal module and
    Lq > 1 -> the top-left causal rule that "sdpa" would have applied."""
    dtype, (q_len, kv_len) = query.dtype, (query.shape[2], key.shape[2])
    if mask is None:
        if not (is_causal and q_len > 1):
            return None
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    return mask


def _fallback(unsupported: Tuple[str, str], module, query, key, value, attention_mask, *,
              dropout, scaling, is_causal, **kwargs):
    kind, what = unsupported
    with _lock:
        _counts["fallback"] += 1
        _counts[f"fallback: {kind}"] += 1
    needs_eager = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    if needs_eager or sdpa_attention_forward is None:
        eager = _model_eager_attention(module)
        if eager is None:
            raise NotImplementedError(
                f"sdpa.transformers: cannot compute this call ({what}) and found no "
                f"eager_attention_forward in {type(module).__module__} to fall back to")
        _warn_once(kind, f"{what}; using the model's eager attention for such calls")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        mask = _additive_mask(attention_mask, query, key, is_causal)
        return eager(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    _warn_once(kind, f"{what}; using transformers' \"sdpa\" attention for such calls")
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)


# ---------------------------------------------------------------------------------------------
# Registration.


def _accept_name_for_every_model() -> None:
    """transformers 5.x checks any attn_implementation whose name contains "sdpa" as if it were
    torch's SDPA, and so refuses "sdpa_cpu" for models with ``_supports_sdpa = False`` (Gemma 2,
    GPT-OSS: torch's SDPA has no softcap or sinks; sdpa has both). The one change: that check
    answers "sdpa_cpu" for "sdpa_cpu", as it does for any other registered name."""
    original = getattr(PreTrainedModel, "get_correct_attn_implementation", None)
    if original is None or getattr(original, "_sdpa_cpu_accepted", False):
        return

    @functools.wraps(original)
    def get_correct_attn_implementation(self, requested_attention, *args, **kwargs):
        if requested_attention == NAME and NAME in modeling_utils.ALL_ATTENTION_FUNCTIONS:
            return NAME
        return original(self, requested_attention, *args, **kwargs)

    setattr(get_correct_attn_implementation, "_sdpa_cpu_accepted", True)
    setattr(PreTrainedModel, "get_correct_attn_implementation", get_correct_attn_implementation)


def register() -> None:
    """Registers attn_implementation="sdpa_cpu" with transformers (done on import; calling it
    again is harmless): attention_forward in AttentionInterface, transformers' boolean "sdpa"
    mask builder in AttentionMaskInterface (without it, transformers would give a custom
    implementation no mask at all), and the name for models without torch-SDPA support."""
    if AttentionInterface is not None:
        AttentionInterface.register(NAME, attention_forward)
    else:
        modeling_utils.ALL_ATTENTION_FUNCTIONS[NAME] = attention_forward
    if AttentionMaskInterface is not None:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    _accept_name_for_every_model()


register()
