// sdpa._sdpa: the nanobind extension behind the Python package.
//
// This file only converts types. An incoming array becomes an sdpa::TensorView that points into the
// caller's memory (shape and element strides copied, no data copied); a result sdpa::Tensor is
// moved into a capsule that owns it and handed to numpy without a copy; the class Options is
// sdpa::Options field by field. The checks of what reaches the library, and their messages, are
// the library's: sdpa::Error surfaces as ValueError and sdpa::DTypeError as TypeError. The GIL is
// released while the library computes, and Ctrl-C interrupts it (Interruptible).
//
// The pure-Python layer (python/sdpa/) decides dtypes (ints -> float64, ...), copies arrays whose
// layout the library cannot take, maps PyTorch-style batch broadcasting to the library's
// [batch, heads, seq, dim] form, fills Options from the keywords and renames the library's
// `options.<field>` in messages to the caller's arguments; the functions here are its private
// back end. python/sdpa/_sdpa.pyi types them.
//
// bfloat16 (issue 13): numpy has no bfloat16 of its own, and an ml_dtypes.bfloat16 array passes
// neither the buffer protocol nor DLPack (numpy exports no kDLBfloat). The Python layer views
// such an array as uint16 and wraps it in BFloat16 (a dtype tag on the bits); a torch bfloat16
// tensor, which DLPack exports as kDLBfloat (code 4, 16 bits), is read as it is. bfloat16 results
// come back as uint16 arrays of the bits, which the Python layer views as its bfloat16 type: the
// library never returns integers otherwise.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "sdpa/sdpa.h"

namespace nb = nanobind;

namespace {

// Any CPU array, read-only access (read-only numpy arrays and broadcast views are accepted).
using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
// A result handed to numpy; it owns its memory through a capsule.
using OutArray = nb::ndarray<nb::numpy>;

constexpr nb::dlpack::dtype kFloat16DLPack{static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float),
                                           16, 1};
constexpr nb::dlpack::dtype kBFloat16DLPack{
    static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};

// The bits of a bfloat16 array, viewed as uint16 by the Python layer: the dtype tag that numpy
// arrays cannot carry themselves (see the header comment).
struct BFloat16 {
  InArray bits;
};

// An argument array: any CPU array, or bfloat16 bits.
using Operand = std::variant<InArray, BFloat16>;

std::string DLPackDTypeName(nb::dlpack::dtype dtype) {
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(dtype.code);
  const std::string bits = std::to_string(dtype.bits);
  if (code == Code::Bool) return "bool";
  if (code == Code::Int) return "int" + bits;
  if (code == Code::UInt) return "uint" + bits;
  if (code == Code::Float) return "float" + bits;
  if (code == Code::Bfloat) return "bfloat" + bits;
  if (code == Code::Complex) return "complex" + bits;
  return "DLPack type code " + std::to_string(dtype.code) + " (" + bits + " bits)";
}

sdpa::DType ToDType(const char* name, nb::dlpack::dtype dtype) {
  if (dtype == nb::dtype<float>()) return sdpa::DType::kFloat32;
  if (dtype == nb::dtype<double>()) return sdpa::DType::kFloat64;
  if (dtype == nb::dtype<bool>()) return sdpa::DType::kBool;
  if (dtype == kFloat16DLPack) return sdpa::DType::kFloat16;
  if (dtype == kBFloat16DLPack) return sdpa::DType::kBFloat16;
  throw sdpa::DTypeError(std::string("sdpa: ") + name + ".dtype is " + DLPackDTypeName(dtype) +
                         " but must be float32, float64, float16, bfloat16 or (for masks) bool");
}

// `array`'s shape and element strides (nanobind's strides are in elements, like the library's).
// Only arrays of more dimensions than a Layout holds are refused here; everything else is the
// library's to check.
template <class Array>
sdpa::Layout LayoutOf(const char* name, const Array& array) {
  const std::size_t rank = array.ndim();
  if (rank > static_cast<std::size_t>(sdpa::kMaxRank)) {
    throw sdpa::Error(std::string("sdpa: ") + name + " has rank " + std::to_string(rank) +
                      " but at most " + std::to_string(sdpa::kMaxRank) +
                      " dimensions are supported");
  }
  sdpa::Layout layout;
  layout.rank = static_cast<int>(rank);
  for (std::size_t d = 0; d < rank; ++d) {
    layout.shape[d] = static_cast<std::int64_t>(array.shape(d));
    layout.strides[d] = array.stride(d);
  }
  return layout;
}

// A view of `array`'s memory with its shape and element strides.
sdpa::TensorView ToView(const char* name, const InArray& array, sdpa::DType dtype) {
  return sdpa::TensorView(array.data(), dtype, LayoutOf(name, array));
}

sdpa::TensorView ToView(const char* name, const Operand& operand) {
  if (const auto* bf16 = std::get_if<BFloat16>(&operand)) {
    return ToView(name, bf16->bits, sdpa::DType::kBFloat16);
  }
  const InArray& array = std::get<InArray>(operand);
  return ToView(name, array, ToDType(name, array.dtype()));
}

BFloat16 MakeBFloat16(const InArray& bits) {
  if (bits.dtype() != nb::dtype<std::uint16_t>()) {
    throw sdpa::DTypeError("sdpa: BFloat16 takes the bits of a bfloat16 array as uint16, not " +
                           DLPackDTypeName(bits.dtype()));
  }
  return BFloat16{bits};
}

nb::dlpack::dtype ToDLPack(sdpa::DType dtype) {
  switch (dtype) {
    case sdpa::DType::kFloat32:
      return nb::dtype<float>();
    case sdpa::DType::kFloat64:
      return nb::dtype<double>();
    case sdpa::DType::kBool:
      return nb::dtype<bool>();
    case sdpa::DType::kBFloat16:
      return nb::dtype<std::uint16_t>();  // the bits: numpy has no bfloat16 (header comment)
    case sdpa::DType::kFloat16:
      return kFloat16DLPack;
    case sdpa::DType::kInt8:
      return nb::dtype<std::int8_t>();
    case sdpa::DType::kInt32:
      return nb::dtype<std::int32_t>();
  }
  return nb::dtype<double>();
}

// Moves `tensor` into a capsule-owned heap object and returns a numpy array over its memory.
OutArray ToNumpy(sdpa::Tensor&& tensor) {
  auto* owned = new sdpa::Tensor(std::move(tensor));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<sdpa::Tensor*>(p); });
  std::size_t shape[sdpa::kMaxRank] = {0, 0, 0, 0};
  for (int d = 0; d < owned->rank(); ++d) shape[d] = static_cast<std::size_t>(owned->dim(d));
  return OutArray(owned->mutable_view().data, static_cast<std::size_t>(owned->rank()), shape, owner,
                  /*strides=*/nullptr, ToDLPack(owned->dtype()));
}

// sdpa::Options as Python sees it (the extension's class Options): its fields, and the array that
// options.mask views, kept alive here for as long as the view points into it. The Python layer
// (python/sdpa/_options.py) fills it from the keywords of a call; the library validates it.
struct Options : sdpa::Options {
  std::optional<Operand> mask_array;
};

void SetMask(Options& options, std::optional<Operand> mask) {
  if (mask) {
    options.mask = ToView("options.mask", *mask);
  } else {
    options.mask.reset();
  }
  options.mask_array = std::move(mask);
}

// Runs a library call with the GIL released and Ctrl-C honoured: the call's Options::interrupt
// takes the GIL for a moment every 2 ms (on this thread only) and runs Python's pending signal
// handlers; when one raises (KeyboardInterrupt), the library stops with sdpa::Interrupted and
// that Python exception is raised here instead. Results of an interrupted call are discarded.
class Interruptible {
 public:
  explicit Interruptible(const sdpa::Options& options) : options_(options) {
    options_.interrupt = [this] {
      nb::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() == 0) return false;
      error_.emplace();  // takes the pending exception
      return true;
    };
  }
  Interruptible(const Interruptible&) = delete;
  Interruptible& operator=(const Interruptible&) = delete;

  template <class Call>
  auto Run(const Call& call) {
    try {
      nb::gil_scoped_release release;
      return call(static_cast<const sdpa::Options&>(options_));
    } catch (const sdpa::Interrupted&) {
      if (error_) throw nb::python_error(std::move(*error_));
      throw;
    }
  }

 private:
  sdpa::Options options_;
  std::optional<nb::python_error> error_;
};

// out, or (out, lse) when return_lse.
nb::object Forward(const Operand& query, const Operand& key, const Operand& value,
                   const Options& options, bool return_lse) {
  const sdpa::TensorView q = ToView("query", query), k = ToView("key", key),
                         v = ToView("value", value);
  Interruptible call(options);
  if (!return_lse) {
    sdpa::Tensor out =
        call.Run([&](const sdpa::Options& o) { return sdpa::Attention(q, k, v, o); });
    return nb::cast(ToNumpy(std::move(out)));
  }
  sdpa::AttentionResult result =
      call.Run([&](const sdpa::Options& o) { return sdpa::AttentionWithLse(q, k, v, o); });
  return nb::make_tuple(ToNumpy(std::move(result.out)), ToNumpy(std::move(result.lse)));
}

// (grad_query, grad_key, grad_value), each the shape and dtype of its input, and grad_sinks
// ([heads]) after them when options.sinks is not empty.
nb::tuple Backward(const Operand& grad_out, const Operand& query, const Operand& key,
                   const Operand& value, const Operand& out, const Operand& lse,
                   const Options& options) {
  const sdpa::TensorView dout = ToView("grad_out", grad_out), q = ToView("query", query),
                         k = ToView("key", key), v = ToView("value", value), o = ToView("out", out),
                         l = ToView("lse", lse);
  Interruptible call(options);
  sdpa::Gradients grads = call.Run([&](const sdpa::Options& opts) {
    return sdpa::AttentionBackward(q, k, v, o, l, dout, opts);
  });
  if (options.sinks.empty()) {
    return nb::make_tuple(ToNumpy(std::move(grads.grad_query)), ToNumpy(std::move(grads.grad_key)),
                          ToNumpy(std::move(grads.grad_value)));
  }
  return nb::make_tuple(ToNumpy(std::move(grads.grad_query)), ToNumpy(std::move(grads.grad_key)),
                        ToNumpy(std::move(grads.grad_value)), ToNumpy(std::move(grads.grad_sinks)));
}

std::string Explain(const Operand& query, const Operand& key, const Operand& value,
                    const Options& options) {
  return sdpa::Explain(ToView("query", query), ToView("key", key), ToView("value", value), options)
      .ToString();
}

OutArray SelfAttention(const InArray& q_array, const InArray& k_array, const InArray& v_array) {
  const sdpa::TensorView q = ToView("Q", q_array), k = ToView("K", k_array),
                         v = ToView("V", v_array);
  sdpa::Tensor out;
  {
    nb::gil_scoped_release release;
    out = sdpa::self_attention(q, k, v);
  }
  return ToNumpy(std::move(out));
}

std::tuple<OutArray, OutArray, OutArray> ComputeQkv(const InArray& x, const InArray& w_q,
                                                    const InArray& w_k, const InArray& w_v) {
  const sdpa::TensorView x_view = ToView("X", x), wq = ToView("W_q", w_q), wk = ToView("W_k", w_k),
                         wv = ToView("W_v", w_v);
  sdpa::QKVTensors qkv;
  {
    nb::gil_scoped_release release;
    qkv = sdpa::compute_qkv(x_view, wq, wk, wv);
  }
  return {ToNumpy(std::move(qkv.Q)), ToNumpy(std::move(qkv.K)), ToNumpy(std::move(qkv.V))};
}

// (out, lse): sdpa::MergePartials over the partials outs[s] / lses[s].
nb::tuple MergePartials(const std::vector<InArray>& outs, const std::vector<InArray>& lses) {
  std::vector<sdpa::TensorView> out_views, lse_views;
  for (std::size_t s = 0; s < outs.size(); ++s) {
    out_views.push_back(ToView(("outs[" + std::to_string(s) + "]").c_str(), outs[s]));
  }
  for (std::size_t s = 0; s < lses.size(); ++s) {
    lse_views.push_back(ToView(("lses[" + std::to_string(s) + "]").c_str(), lses[s]));
  }
  sdpa::MergedPartials merged;
  {
    nb::gil_scoped_release release;
    merged = sdpa::MergePartials(out_views, lse_views);
  }
  return nb::make_tuple(ToNumpy(std::move(merged.out)), ToNumpy(std::move(merged.lse)));
}

// ---- Attention over a KV cache (issue 15) ---------------------------------------------------
// sdpa::AttentionWithKvCache. The caches (and an int8 cache's scales) are written in place, so
// they arrive as writable arrays (CacheArray) and are never copied; the Python layer
// (python/sdpa/_kv_cache.py) has checked that they are writable and readable in place.

// Any CPU array that the library may write into.
using CacheArray = nb::ndarray<nb::device::cpu>;

// The dtypes of a KV-cache call: int8 (a quantized cache) and int32 (cache_seqlens,
// block_table) here, the float dtypes from ToDType as for every other argument. (q, k and v are
// Operands, bfloat16 included, read by ToView; a bfloat16 cache, which crosses as read-only
// bits, is not taken yet.)
sdpa::DType KvDType(const char* name, nb::dlpack::dtype dtype) {
  if (dtype == nb::dtype<std::int8_t>()) return sdpa::DType::kInt8;
  if (dtype == nb::dtype<std::int32_t>()) return sdpa::DType::kInt32;
  return ToDType(name, dtype);
}

sdpa::TensorView ToKvView(const char* name, const InArray& array) {
  return ToView(name, array, KvDType(name, array.dtype()));
}

sdpa::MutableTensorView ToCacheView(const char* name, const CacheArray& array) {
  return sdpa::MutableTensorView(array.data(), KvDType(name, array.dtype()), LayoutOf(name, array));
}

// out, or (out, lse) when return_lse. Argument names are the library's (cache.key, append.key,
// ...); the Python layer renames them in messages.
nb::object AttentionWithKvCache(const Operand& query, const CacheArray& k_cache,
                                const CacheArray& v_cache, const std::optional<Operand>& k,
                                const std::optional<Operand>& v, const InArray& cache_seqlens,
                                const std::optional<InArray>& block_table,
                                const std::optional<CacheArray>& k_scale,
                                const std::optional<CacheArray>& v_scale, const Options& options,
                                bool return_lse) {
  const sdpa::TensorView q = ToView("query", query),
                         lens = ToKvView("cache_seqlens", cache_seqlens);
  sdpa::KvCache cache;
  cache.key = ToCacheView("cache.key", k_cache);
  cache.value = ToCacheView("cache.value", v_cache);
  if (block_table) cache.block_table = ToKvView("cache.block_table", *block_table);
  if (k_scale) cache.key_scale = ToCacheView("cache.key_scale", *k_scale);
  if (v_scale) cache.value_scale = ToCacheView("cache.value_scale", *v_scale);
  if (k.has_value() != v.has_value()) {
    throw sdpa::Error(std::string("sdpa: append.") + (k ? "key" : "value") +
                      " is given but append." + (k ? "value" : "key") +
                      " is not; give both or neither");
  }
  std::optional<sdpa::KvAppend> append;
  if (k) append = sdpa::KvAppend{ToView("append.key", *k), ToView("append.value", *v)};

  Interruptible call(options);
  // Without the lse (or with shapes the library refuses, which it reports), the library
  // allocates out; with it, out and lse are allocated here: [batch, heads, q_len, v_dim] of the
  // query's dtype and [batch, heads, q_len] float32, as sdpa/kv_cache.h states.
  if (!return_lse || q.rank() != 4 || cache.value.rank() != 4) {
    sdpa::Tensor out = call.Run([&](const sdpa::Options& o) {
      return sdpa::AttentionWithKvCache(q, cache, lens, append, o);
    });
    return nb::cast(ToNumpy(std::move(out)));
  }
  sdpa::Tensor out(q.dtype, {q.dim(0), q.dim(1), q.dim(2), cache.value.dim(3)});
  sdpa::Tensor lse(sdpa::DType::kFloat32, {q.dim(0), q.dim(1), q.dim(2)});
  call.Run([&](const sdpa::Options& o) {
    const sdpa::MutableTensorView lse_view = lse.mutable_view();
    sdpa::AttentionWithKvCache(q, cache, lens, append, out.mutable_view(), &lse_view, o);
  });
  return nb::make_tuple(ToNumpy(std::move(out)), ToNumpy(std::move(lse)));
}

}  // namespace

NB_MODULE(_sdpa, m) {
  m.doc() = "sdpa's C++ library, bound with nanobind. Use the functions of the `sdpa` package.";
  m.attr("__version__") = SDPA_VERSION;

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const sdpa::DTypeError& e) {  // derives from sdpa::Error: catch it first
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const sdpa::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const sdpa::Interrupted& e) {  // stopped without a Python exception to raise
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    }
  });

  nb::class_<BFloat16>(m, "BFloat16",
                       "The bits of a bfloat16 array (uint16), tagged as bfloat16 for the library.")
      .def(nb::new_(&MakeBFloat16), nb::arg("bits"))
      .def_ro("bits", &BFloat16::bits);
  nb::enum_<sdpa::Causal>(m, "Causal", "sdpa::Causal.")
      .value("none", sdpa::Causal::kNone)
      .value("top_left", sdpa::Causal::kTopLeft)
      .value("bottom_right", sdpa::Causal::kBottomRight);
  nb::enum_<sdpa::Backend>(m, "Backend", "sdpa::Backend.")
      .value("auto", sdpa::Backend::kAuto)
      .value("reference", sdpa::Backend::kReference)
      .value("cpu", sdpa::Backend::kCpu);
  nb::class_<sdpa::Window>(m, "Window", "sdpa::Window: None for a side = unbounded.")
      .def(
          "__init__",
          [](sdpa::Window* window, std::optional<std::int64_t> left,
             std::optional<std::int64_t> right) {
            new (window) sdpa::Window{left, right};
          },
          nb::arg("left").none() = nb::none(), nb::arg("right").none() = nb::none())
      .def_rw("left", &sdpa::Window::left)
      .def_rw("right", &sdpa::Window::right);
  // One attribute per field of sdpa::Options (include/sdpa/options.h has their meaning); a new
  // field is one more line here. `custom` (C++ callables) has no Python form.
  nb::class_<Options>(m, "Options",
                      "sdpa::Options, field by field; built by sdpa._options.make_options.")
      .def(nb::init<>())
      .def_rw("scale", &sdpa::Options::scale)
      .def_rw("causal", &sdpa::Options::causal)
      .def_prop_rw(
          "mask", [](const Options& options) { return options.mask_array; }, &SetMask,
          nb::for_setter(nb::arg("mask").none()))
      .def_rw("backend", &sdpa::Options::backend)
      .def_rw("window", &sdpa::Options::window)
      .def_rw("alibi_slopes", &sdpa::Options::alibi_slopes)
      .def_rw("softcap", &sdpa::Options::softcap)
      .def_rw("sinks", &sdpa::Options::sinks)
      .def_rw("cu_seqlens_q", &sdpa::Options::cu_seqlens_q)
      .def_rw("cu_seqlens_k", &sdpa::Options::cu_seqlens_k)
      .def_rw("dropout_p", &sdpa::Options::dropout_p)
      .def_rw("seed", &sdpa::Options::seed);

  m.def("forward", &Forward, nb::arg("query"), nb::arg("key"), nb::arg("value"), nb::arg("options"),
        nb::arg("return_lse"),
        "sdpa::Attention / AttentionWithLse on rank 2-4 arrays; returns out or (out, lse).");
  m.def("backward", &Backward, nb::arg("grad_out"), nb::arg("query"), nb::arg("key"),
        nb::arg("value"), nb::arg("out"), nb::arg("lse"), nb::arg("options"),
        "sdpa::AttentionBackward on rank 2-4 arrays; returns (grad_query, grad_key, "
        "grad_value), and grad_sinks after them when options.sinks is not empty.");
  m.def("explain", &Explain, nb::arg("query"), nb::arg("key"), nb::arg("value"), nb::arg("options"),
        "sdpa::Explain(...).ToString(): the backend, path and threads a call would use.");
  m.def("merge_partials", &MergePartials, nb::arg("outs"), nb::arg("lses"),
        "sdpa::MergePartials over lists of rank 2-4 arrays; returns (out, lse).");
  m.def("self_attention", &SelfAttention, nb::arg("Q"), nb::arg("K"), nb::arg("V"),
        "sdpa::self_attention on rank-2 arrays.");
  m.def("compute_qkv", &ComputeQkv, nb::arg("X"), nb::arg("W_q"), nb::arg("W_k"), nb::arg("W_v"),
        "sdpa::compute_qkv on rank-2 arrays; returns (Q, K, V).");
  m.def("set_num_threads", &sdpa::SetNumThreads, nb::arg("n"),
        "sdpa::SetNumThreads: threads of the CPU engine; 0 = all hardware threads.");
  m.def("get_num_threads", &sdpa::GetNumThreads, "sdpa::GetNumThreads.");
  m.def("attention_with_kvcache", &AttentionWithKvCache, nb::arg("query"), nb::arg("k_cache"),
        nb::arg("v_cache"), nb::arg("k").none(), nb::arg("v").none(), nb::arg("cache_seqlens"),
        nb::arg("block_table").none(), nb::arg("k_scale").none(), nb::arg("v_scale").none(),
        nb::arg("options"), nb::arg("return_lse"),
        "sdpa::AttentionWithKvCache: appends k/v (when given) into the caches in place, then "
        "attends; returns out or (out, lse).");
}
