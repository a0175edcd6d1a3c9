#include "api/validate.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace sdpa::internal {
namespace {

constexpr std::int64_t kMaxInt64 = std::numeric_limits<std::int64_t>::max();

// a * b, or false when it does not fit in int64 (a, b >= 0).
bool MulFits(std::int64_t a, std::int64_t b, std::int64_t* result) {
  if (a != 0 && b > kMaxInt64 / a) return false;
  *result = a * b;
  return true;
}
bool AddFits(std::int64_t a, std::int64_t b, std::int64_t* result) {
  if (b > kMaxInt64 - a) return false;
  *result = a + b;
  return true;
}
std::int64_t Abs(std::int64_t x) {
  // Strides of INT64_MIN are rejected before this is called.
  return x < 0 ? -x : x;
}

// Names of the dimensions of a rank-4 operand, for messages.
constexpr const char* kQueryDims[4] = {"batch", "heads", "q_len", "head_dim"};
constexpr const char* kKeyDims[4] = {"batch", "kv_heads", "kv_len", "head_dim"};
constexpr const char* kValueDims[4] = {"batch", "kv_heads", "kv_len", "v_dim"};

// A rank-r view seen as rank 4: leading size-1 dimensions with stride 0.
struct Normalized {
  std::int64_t shape[4];
  std::int64_t stride[4];
  int rank;  // original rank, to turn a rank-4 index back into the caller's index

  int UserIndex(int d) const { return d - (4 - rank); }
};
Normalized Normalize(const Layout& layout) {
  Normalized n{{1, 1, 1, 1}, {0, 0, 0, 0}, layout.rank};
  const int pad = 4 - layout.rank;
  for (int d = 0; d < layout.rank; ++d) {
    n.shape[pad + d] = layout.shape[d];
    n.stride[pad + d] = layout.strides[d];
  }
  return n;
}

void CheckDim(const char* name, const Normalized& n, int d, const char* dim_name,
              const char* other_name, const Normalized& other) {
  if (n.shape[d] != other.shape[d]) {
    Fail(name, ".shape[", n.UserIndex(d), "] (", dim_name, ") is ", n.shape[d], " but ", other_name,
         ".shape[", other.UserIndex(d), "] is ", other.shape[d]);
  }
}

bool IsFloat(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kBFloat16 ||
         dtype == DType::kFloat16;
}
void CheckFloatDType(const char* name, DType dtype) {
  if (!IsFloat(dtype)) {
    FailDType(name, ".dtype is ", DTypeName(dtype),
              " but must be float32, bfloat16, float16 or float64");
  }
}
void CheckSameDType(const char* name, DType dtype, const char* other_name, DType other) {
  if (dtype != other) {
    FailDType(name, ".dtype is ", DTypeName(dtype), " but ", other_name, ".dtype is ",
              DTypeName(other));
  }
}

// Byte range [lo, hi) touched by a view; empty (lo == hi) when it has no element.
struct ByteRange {
  std::uintptr_t lo = 0, hi = 0;
};
ByteRange RangeOf(const void* data, DType dtype, const Layout& layout) {
  ByteRange r;
  if (layout.NumElements() == 0 || data == nullptr) return r;
  const auto elem = static_cast<std::int64_t>(DTypeSize(dtype));
  std::int64_t below = 0, above = 0;  // element offsets, validated to fit
  for (int d = 0; d < layout.rank; ++d) {
    const std::int64_t reach = (layout.shape[d] - 1) * layout.strides[d];
    (reach < 0 ? below : above) += reach;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(data);
  r.lo = base - static_cast<std::uintptr_t>(-below * elem);
  r.hi = base + static_cast<std::uintptr_t>((above + 1) * elem);
  return r;
}

// True when two distinct indices of the view can address the same element. Sufficient test:
// sorted by |stride|, each stride must exceed the reach of all smaller ones.
bool SelfOverlaps(const Layout& layout) {
  if (layout.NumElements() <= 1) return false;
  std::vector<std::pair<std::int64_t, std::int64_t>> dims;  // (|stride|, size)
  for (int d = 0; d < layout.rank; ++d) {
    if (layout.shape[d] > 1) dims.emplace_back(Abs(layout.strides[d]), layout.shape[d]);
  }
  std::sort(dims.begin(), dims.end());
  std::int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return true;
    reach += (size - 1) * stride;
  }
  return false;
}

// A result of the forward (out) or a tensor shaped like it (grad_out): float64 for a float64
// call, else float32, bfloat16 or float16 (any of them, whatever the query's).
void CheckResultDType(const char* name, DType dtype, const Problem& p) {
  const bool ok =
      p.compute == DType::kFloat64
          ? dtype == DType::kFloat64
          : dtype == DType::kFloat32 || dtype == DType::kBFloat16 || dtype == DType::kFloat16;
  if (!ok) {
    FailDType(name, ".dtype is ", DTypeName(dtype), " but query.dtype is ", DTypeName(p.q.dtype),
              "; ", name, " must be ",
              p.compute == DType::kFloat64 ? "float64" : "float32, bfloat16 or float16");
  }
}
// lse is always of the compute type: float32, or float64 for a float64 call.
void CheckLseDType(DType dtype, const Problem& p) {
  if (dtype != p.compute) {
    FailDType("lse.dtype is ", DTypeName(dtype), " but query.dtype is ", DTypeName(p.q.dtype),
              "; lse must be ", DTypeName(p.compute));
  }
}

// View and exact shape of an operand whose shape follows from the problem (its dtype is
// checked by the caller).
void CheckShaped(const char* name, const void* data, DType dtype, const Layout& layout,
                 const std::vector<std::int64_t>& expected_shape) {
  const int rank = static_cast<int>(expected_shape.size());
  CheckView(name, data, dtype, layout, rank, rank);
  for (int d = 0; d < rank; ++d) {
    if (layout.shape[d] != expected_shape[static_cast<std::size_t>(d)]) {
      Fail(name, ".shape is ", ShapeString(layout), " but must be ", ShapeString(expected_shape));
    }
  }
}

void CheckOutput(const char* name, const MutableTensorView& view,
                 const std::vector<std::int64_t>& expected_shape) {
  CheckShaped(name, view.data, view.dtype, view.layout, expected_shape);
  if (SelfOverlaps(view.layout)) {
    const std::vector<std::int64_t> strides(view.layout.strides,
                                            view.layout.strides + view.layout.rank);
    Fail(name, " has overlapping elements: shape ", ShapeString(view.layout), " with strides ",
         ShapeString(strides), " maps two indices to one address");
  }
}

// lse [.., Lq] seen as [.., Lq, 1], so that a rank-4 operand's Row(b, h, i) addresses it.
Layout LseAsRows(Layout lse) {
  lse.shape[lse.rank] = 1;
  lse.strides[lse.rank] = 0;
  lse.rank += 1;
  return lse;
}

// The trailing `rank` entries of a rank-4 shape.
std::vector<std::int64_t> Trailing(std::vector<std::int64_t> full, int rank) {
  return std::vector<std::int64_t>(full.end() - rank, full.end());
}

// Copies a view's strides, normalised to rank 4, into an operand.
template <typename Op>
void SetOperand(Op& op, decltype(Op::data) data, DType dtype, const Layout& layout) {
  const Normalized n = Normalize(layout);
  op.data = data;
  op.dtype = dtype;
  std::copy(n.stride, n.stride + 4, op.stride);
}

void CheckPerHead(const char* name, const std::vector<double>& values, std::int64_t heads) {
  if (!values.empty() && static_cast<std::int64_t>(values.size()) != heads) {
    Fail(name, " has ", values.size(), " values but must have one per query head (", heads, ")");
  }
}

// cu_seqlens: length sequences + 1, starts at 0, non-decreasing, ends at `total`.
void CheckOffsets(const char* name, const std::vector<std::int64_t>& offsets, std::int64_t total,
                  const char* total_name) {
  if (offsets.size() < 2) {
    Fail(name, " has ", offsets.size(), " values but must have at least 2 (sequences + 1)");
  }
  if (offsets.front() != 0) Fail(name, "[0] is ", offsets.front(), " but must be 0");
  for (std::size_t s = 1; s < offsets.size(); ++s) {
    if (offsets[s] < offsets[s - 1]) {
      Fail(name, "[", s, "] is ", offsets[s], ", below ", name, "[", s - 1, "] = ", offsets[s - 1],
           "; offsets must not decrease");
    }
  }
  if (offsets.back() != total) {
    Fail(name, "[", offsets.size() - 1, "] is ", offsets.back(), " but must be ", total, " (",
         total_name, ")");
  }
}

void ValidateVariants(const Options& o, Problem& p) {
  if (o.window) {
    for (const auto& [side, name] :
         {std::pair{o.window->left, "left"}, std::pair{o.window->right, "right"}}) {
      if (side && *side < 0) Fail("options.window.", name, " is ", *side, " but must be >= 0");
    }
    p.window_left = o.window->left ? std::min(*o.window->left, kUnbounded) : kUnbounded;
    p.window_right = o.window->right ? std::min(*o.window->right, kUnbounded) : kUnbounded;
  }
  CheckPerHead("options.alibi_slopes", o.alibi_slopes, p.heads);
  for (std::size_t h = 0; h < o.alibi_slopes.size(); ++h) {
    if (!std::isfinite(o.alibi_slopes[h])) {
      Fail("options.alibi_slopes[", h, "] is ", o.alibi_slopes[h], " but must be finite");
    }
  }
  p.alibi_slopes = o.alibi_slopes;
  if (o.softcap) {
    if (!(std::isfinite(*o.softcap) && *o.softcap > 0)) {
      Fail("options.softcap is ", *o.softcap, " but must be finite and > 0");
    }
    p.softcap = *o.softcap;
  }
  CheckPerHead("options.sinks", o.sinks, p.heads);
  for (std::size_t h = 0; h < o.sinks.size(); ++h) {
    if (std::isnan(o.sinks[h]) || o.sinks[h] == std::numeric_limits<double>::infinity()) {
      Fail("options.sinks[", h, "] is ", o.sinks[h], " but must be finite or -inf");
    }
  }
  p.sinks = o.sinks;
  if (o.cu_seqlens_q.empty() != o.cu_seqlens_k.empty()) {
    Fail(o.cu_seqlens_q.empty() ? "options.cu_seqlens_k is set but options.cu_seqlens_q is not"
                                : "options.cu_seqlens_q is set but options.cu_seqlens_k is not",
         "; packed sequences need both");
  }
  if (!o.cu_seqlens_q.empty()) {
    if (p.batch != 1) {
      Fail("query.shape batch is ", p.batch,
           " but must be 1 with options.cu_seqlens_q (sequences are packed along q_len)");
    }
    if (o.cu_seqlens_q.size() != o.cu_seqlens_k.size()) {
      Fail("options.cu_seqlens_q has ", o.cu_seqlens_q.size(),
           " values but options.cu_seqlens_k has ", o.cu_seqlens_k.size(),
           "; both are sequences + 1");
    }
    CheckOffsets("options.cu_seqlens_q", o.cu_seqlens_q, p.q_len, "q_len");
    CheckOffsets("options.cu_seqlens_k", o.cu_seqlens_k, p.kv_len, "kv_len");
    p.cu_seqlens_q = o.cu_seqlens_q;
    p.cu_seqlens_k = o.cu_seqlens_k;
  }
  if (!(o.dropout_p >= 0 && o.dropout_p <= 1)) {
    Fail("options.dropout_p is ", o.dropout_p, " but must be in [0, 1]");
  }
  if (o.dropout_p > 0) {
    constexpr std::int64_t kLimit = std::int64_t{1} << 32;  // dropout.h's counter words
    if (p.q_len >= kLimit || p.kv_len >= kLimit || p.heads >= kLimit ||
        p.num_sequences() >= kLimit) {
      Fail("dropout needs batch, heads, q_len and kv_len below 2^32 (its counter words)");
    }
  }
  p.dropout_p = o.dropout_p;
  p.seed = o.seed;
  if (o.custom != nullptr) {
    const CustomScore& c = *o.custom;
    if ((c.score_f32 == nullptr) != (c.score_f64 == nullptr) ||
        (c.mask_f32 == nullptr) != (c.mask_f64 == nullptr)) {
      Fail("options.custom is incomplete; build it with sdpa::MakeCustom");
    }
    p.custom = o.custom;
  }
}

// A work limit (options.h): the option when set, else the environment variable, else `fallback`.
double ResolveLimit(const char* option_name, double option, const char* env_name, double fallback) {
  if (option != 0) {
    if (!(option > 0)) Fail(option_name, " is ", option, " but must be > 0 (0 = the default)");
    return option;
  }
  const char* env = std::getenv(env_name);
  if (env == nullptr || env[0] == '\0') return fallback;
  char* end = nullptr;
  const double value = std::strtod(env, &end);
  if (*end != '\0' || !(value > 0)) {
    Fail("environment variable ", env_name, " is '", env, "' but must be a number > 0");
  }
  return value;
}

double PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 1e18;
}

}  // namespace

Work ForwardWork(const Problem& p, bool owned_outputs) {
  const double rows =
      static_cast<double>(p.batch) * static_cast<double>(p.heads) * static_cast<double>(p.q_len);
  const auto elem = static_cast<double>(DTypeSize(p.q.dtype));
  Work w;
  w.flops = 2.0 * rows * static_cast<double>(p.kv_len) * static_cast<double>(p.head_dim + p.v_dim);
  // The forward's scratch is per thread and per tile, except split-KV partials, which exist only
  // for few rows; so only returned tensors count.
  if (owned_outputs) w.bytes = rows * static_cast<double>(p.v_dim + 1) * elem;
  return w;
}

Work BackwardWork(const Problem& p, bool owned_outputs) {
  const auto elem = static_cast<double>(DTypeSize(p.q.dtype));
  const double q_rows =
      static_cast<double>(p.batch) * static_cast<double>(p.heads) * static_cast<double>(p.q_len);
  const double kv_rows = static_cast<double>(p.batch) * static_cast<double>(p.kv_heads) *
                         static_cast<double>(p.kv_len);
  Work w;
  w.flops = 2.5 * ForwardWork(p, false).flops;
  w.bytes = q_rows * static_cast<double>(p.head_dim + 2) * elem;  // dQ accumulators, Δ
  if (owned_outputs) {
    w.bytes += (q_rows * static_cast<double>(p.head_dim) +
                kv_rows * static_cast<double>(p.head_dim + p.v_dim)) *
               elem;
  }
  return w;
}

void CheckWork(const Problem& p, const Work& work) {
  if (work.flops > p.max_flops) {
    Fail("the call needs ", work.flops, " floating-point operations (batch ", p.batch, ", heads ",
         p.heads, ", q_len ", p.q_len, ", kv_len ", p.kv_len, ", head_dim ", p.head_dim, ", v_dim ",
         p.v_dim, "), more than the limit of ", p.max_flops,
         "; raise options.max_flops (or SDPA_MAX_FLOPS) if this is intended");
  }
  if (work.bytes > p.max_bytes) {
    Fail("the call needs about ", work.bytes,
         " bytes of memory for its results and scratch (batch ", p.batch, ", heads ", p.heads,
         ", q_len ", p.q_len, ", kv_len ", p.kv_len, "), more than ", "the limit of ", p.max_bytes,
         "; raise options.max_bytes (or SDPA_MAX_BYTES) if this "
         "is intended");
  }
}

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (std::size_t d = 0; d < shape.size(); ++d) os << (d ? ", " : "") << shape[d];
  os << "]";
  return os.str();
}
std::string ShapeString(const Layout& layout) {
  return ShapeString(std::vector<std::int64_t>(layout.shape, layout.shape + layout.rank));
}

std::int64_t CheckLayout(const char* name, DType dtype, const Layout& layout, int min_rank,
                         int max_rank) {
  if (layout.rank < min_rank || layout.rank > max_rank) {
    if (min_rank == 2 && max_rank == 4) {
      Fail(name, " has rank ", layout.rank,
           " but must have rank 2 (seq, dim), 3 (heads, seq, dim) or 4 (batch, heads, seq, dim)");
    }
    if (min_rank == max_rank)
      Fail(name, " has rank ", layout.rank, " but must have rank ", min_rank);
    Fail(name, " has rank ", layout.rank, " but must have rank ", min_rank, " to ", max_rank);
  }
  std::int64_t elements = 1, reach = 0;
  bool fits = true;
  for (int d = 0; d < layout.rank; ++d) {
    const std::int64_t size = layout.shape[d], stride = layout.strides[d];
    if (size < 0) Fail(name, ".shape[", d, "] is ", size, " but must be >= 0");
    if (stride == std::numeric_limits<std::int64_t>::min()) {
      Fail(name, ".strides[", d, "] is ", stride, ", which is out of range");
    }
    fits = fits && MulFits(elements, size, &elements);
  }
  if (fits && elements > 0) {
    for (int d = 0; d < layout.rank && fits; ++d) {
      std::int64_t dim_reach = 0;
      fits = MulFits(layout.shape[d] - 1, Abs(layout.strides[d]), &dim_reach) &&
             AddFits(reach, dim_reach, &reach);
    }
    std::int64_t bytes = 0;
    fits = fits && AddFits(reach, 1, &reach) &&
           MulFits(reach, static_cast<std::int64_t>(DTypeSize(dtype)), &bytes);
  }
  if (!fits) {
    Fail(name, " with shape ", ShapeString(layout),
         " is too large: its element count or byte span overflows int64");
  }
  return elements;
}

void CheckView(const char* name, const void* data, DType dtype, const Layout& layout, int min_rank,
               int max_rank) {
  const std::int64_t elements = CheckLayout(name, dtype, layout, min_rank, max_rank);
  if (elements > 0 && data == nullptr) {
    Fail(name, ".data is null but ", name, " has ", elements, " elements");
  }
}

Problem ValidateInputs(const TensorView& query, const TensorView& key, const TensorView& value,
                       const Options& options) {
  CheckView("query", query.data, query.dtype, query.layout, 2, 4);
  CheckView("key", key.data, key.dtype, key.layout, 2, 4);
  CheckView("value", value.data, value.dtype, value.layout, 2, 4);
  if (key.rank() != query.rank()) {
    Fail("key has rank ", key.rank(), " but query has rank ", query.rank());
  }
  if (value.rank() != query.rank()) {
    Fail("value has rank ", value.rank(), " but query has rank ", query.rank());
  }
  CheckFloatDType("query", query.dtype);
  CheckFloatDType("key", key.dtype);
  CheckFloatDType("value", value.dtype);
  // float64 is the reference precision: all of a call's inputs, or none.
  for (const auto& [name, dtype] : {std::pair{"key", key.dtype}, {"value", value.dtype}}) {
    if ((dtype == DType::kFloat64) != (query.dtype == DType::kFloat64)) {
      FailDType(name, ".dtype is ", DTypeName(dtype), " but query.dtype is ",
                DTypeName(query.dtype), "; float64 needs query, key and value all float64");
    }
  }
  if (value.dtype != key.dtype) {
    FailDType("value.dtype is ", DTypeName(value.dtype), " but key.dtype is ", DTypeName(key.dtype),
              "; key and value must share a dtype");
  }

  const Normalized q = Normalize(query.layout), k = Normalize(key.layout),
                   v = Normalize(value.layout);
  CheckDim("key", k, 0, kKeyDims[0], "query", q);
  CheckDim("value", v, 0, kValueDims[0], "query", q);
  CheckDim("value", v, 1, kValueDims[1], "key", k);
  CheckDim("key", k, 3, kKeyDims[3], "query", q);
  CheckDim("value", v, 2, kValueDims[2], "key", k);
  const std::int64_t heads = q.shape[1], kv_heads = k.shape[1];
  if (kv_heads == 0 ? heads != 0 : heads % kv_heads != 0) {
    Fail("query.shape[", q.UserIndex(1), "] (", kQueryDims[1], ") is ", heads,
         ", which is not a multiple of key.shape[", k.UserIndex(1), "] (kv_heads) ", kv_heads);
  }

  Problem p;
  // float64 computes in float64; float32, bfloat16 and float16 in float32.
  p.compute = query.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  p.q.dtype = query.dtype;
  p.kv.k.dtype = key.dtype;
  p.kv.v.dtype = value.dtype;
  p.batch = q.shape[0];
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.q_len = q.shape[2];
  p.kv_len = k.shape[2];
  p.head_dim = q.shape[3];
  p.v_dim = v.shape[3];
  p.q.data = query.data;
  p.kv.k.data = key.data;
  p.kv.v.data = value.data;
  std::copy(q.stride, q.stride + 4, p.q.stride);
  std::copy(k.stride, k.stride + 4, p.kv.k.stride);
  std::copy(v.stride, v.stride + 4, p.kv.v.stride);

  const int causal = static_cast<int>(options.causal);
  if (causal < 0 || causal > static_cast<int>(Causal::kBottomRight)) {
    Fail("options.causal is ", causal, " but must be kNone, kTopLeft or kBottomRight");
  }
  p.causal = options.causal;
  const int backend = static_cast<int>(options.backend);
  if (backend < 0 || backend > static_cast<int>(Backend::kCpu)) {
    Fail("options.backend is ", backend, " but must be kAuto, kReference or kCpu");
  }
  p.backend = options.backend;

  p.scale = options.scale ? *options.scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  if (options.scale && !std::isfinite(*options.scale)) {
    Fail("options.scale is ", *options.scale, " but must be finite");
  }
  if (!options.scale && p.head_dim == 0) p.scale = 1.0;  // no dot product to scale

  if (options.mask) {
    const TensorView& mask = *options.mask;
    CheckView("options.mask", mask.data, mask.dtype, mask.layout, 1, 4);
    if (mask.dtype != DType::kBool && !IsFloat(mask.dtype)) {
      FailDType("options.mask.dtype is ", DTypeName(mask.dtype),
                " but must be bool or a float dtype (float32, float64, bfloat16, float16)");
    }
    const Normalized m = Normalize(mask.layout);
    const std::int64_t target[4] = {p.batch, p.heads, p.q_len, p.kv_len};
    const char* target_names[4] = {"batch", "heads", "q_len", "kv_len"};
    for (int d = 4 - mask.rank(); d < 4; ++d) {
      if (m.shape[d] != target[d] && m.shape[d] != 1) {
        Fail("options.mask.shape[", m.UserIndex(d), "] is ", m.shape[d], " but must be 1 or ",
             target[d], " (", target_names[d], ") to broadcast to ",
             ShapeString(std::vector<std::int64_t>(target, target + 4)));
      }
    }
    p.mask_kind = mask.dtype == DType::kBool ? MaskKind::kBool : MaskKind::kAdditive;
    p.mask.data = mask.data;
    p.mask.dtype = mask.dtype;
    for (int d = 0; d < 4; ++d) p.mask.stride[d] = m.shape[d] == 1 ? 0 : m.stride[d];
  }
  ValidateVariants(options, p);
  p.interrupt = options.interrupt ? &options.interrupt : nullptr;
  p.max_flops = ResolveLimit("options.max_flops", options.max_flops, "SDPA_MAX_FLOPS", 1e17);
  p.max_bytes =
      ResolveLimit("options.max_bytes", options.max_bytes, "SDPA_MAX_BYTES", PhysicalMemoryBytes());
  return p;
}

std::vector<std::int64_t> OutShape(const Problem& p, int query_rank) {
  std::vector<std::int64_t> full = {p.batch, p.heads, p.q_len, p.v_dim};
  return std::vector<std::int64_t>(full.end() - query_rank, full.end());
}
std::vector<std::int64_t> LseShape(const Problem& p, int query_rank) {
  std::vector<std::int64_t> full = {p.batch, p.heads, p.q_len};
  return std::vector<std::int64_t>(full.end() - (query_rank - 1), full.end());
}

bool Overlaps(const void* a_data, DType a_dtype, const Layout& a, const void* b_data, DType b_dtype,
              const Layout& b) {
  const ByteRange ra = RangeOf(a_data, a_dtype, a), rb = RangeOf(b_data, b_dtype, b);
  if (ra.lo == ra.hi || rb.lo == rb.hi) return false;
  return ra.lo < rb.hi && rb.lo < ra.hi;
}

void CheckBackwardInputs(const Problem& p, int query_rank, const TensorView& out,
                         const TensorView& lse, const TensorView& grad_out) {
  CheckResultDType("out", out.dtype, p);
  CheckShaped("out", out.data, out.dtype, out.layout, OutShape(p, query_rank));
  CheckLseDType(lse.dtype, p);
  CheckShaped("lse", lse.data, lse.dtype, lse.layout, LseShape(p, query_rank));
  CheckResultDType("grad_out", grad_out.dtype, p);
  CheckShaped("grad_out", grad_out.data, grad_out.dtype, grad_out.layout, OutShape(p, query_rank));
}

BackwardProblem ValidateBackward(Problem problem, int query_rank,
                                 const std::vector<TensorView>& forward_inputs,
                                 const TensorView& out, const TensorView& lse,
                                 const TensorView& grad_out, const MutableTensorView& grad_query,
                                 const MutableTensorView& grad_key,
                                 const MutableTensorView& grad_value,
                                 const MutableTensorView* grad_sinks) {
  const Problem& p = problem;
  CheckBackwardInputs(p, query_rank, out, lse, grad_out);
  if (p.has_score_mod() && !p.custom->differentiable) {
    Fail(
        "the backward needs d score_mod / d score, but score_mod cannot be called with "
        "sdpa::Dual; write it as a generic lambda taking `auto` (sdpa/custom.h)");
  }
  std::vector<const MutableTensorView*> grads = {&grad_query, &grad_key, &grad_value};
  std::vector<const char*> grad_names = {"grad_query", "grad_key", "grad_value"};
  if (grad_sinks != nullptr) {
    if (p.sinks.empty()) Fail("grad_sinks is given but options.sinks is not set");
    CheckSameDType("grad_sinks", grad_sinks->dtype, "query", p.q.dtype);
    CheckOutput("grad_sinks", *grad_sinks, {p.heads});
    grads.push_back(grad_sinks);
    grad_names.push_back("grad_sinks");
  }
  // Each gradient has its input's dtype.
  CheckSameDType("grad_query", grad_query.dtype, "query", p.q.dtype);
  CheckOutput("grad_query", grad_query,
              Trailing({p.batch, p.heads, p.q_len, p.head_dim}, query_rank));
  CheckSameDType("grad_key", grad_key.dtype, "key", p.kv.k.dtype);
  CheckOutput("grad_key", grad_key,
              Trailing({p.batch, p.kv_heads, p.kv_len, p.head_dim}, query_rank));
  CheckSameDType("grad_value", grad_value.dtype, "value", p.kv.v.dtype);
  CheckOutput("grad_value", grad_value,
              Trailing({p.batch, p.kv_heads, p.kv_len, p.v_dim}, query_rank));

  std::vector<TensorView> inputs = forward_inputs;
  std::vector<const char*> input_names = {"query", "key", "value"};
  if (inputs.size() > 3) input_names.push_back("options.mask");
  for (const auto& [view, name] : {std::pair{out, "out"}, {lse, "lse"}, {grad_out, "grad_out"}}) {
    inputs.push_back(view);
    input_names.push_back(name);
  }
  for (std::size_t g = 0; g < grads.size(); ++g) {
    const MutableTensorView& grad = *grads[g];
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const TensorView& in = inputs[i];
      if (Overlaps(grad.data, grad.dtype, grad.layout, in.data, in.dtype, in.layout)) {
        Fail(grad_names[g], " overlaps ", input_names[i],
             " in memory; outputs must not alias inputs");
      }
    }
    for (std::size_t other = 0; other < g; ++other) {
      if (Overlaps(grad.data, grad.dtype, grad.layout, grads[other]->data, grads[other]->dtype,
                   grads[other]->layout)) {
        Fail(grad_names[g], " overlaps ", grad_names[other], " in memory");
      }
    }
  }

  BackwardProblem b;
  b.forward = std::move(problem);
  // The forward's results are read-only inputs of the backward: Operand<void> by convention.
  SetOperand(b.forward.out, const_cast<void*>(out.data), out.dtype, out.layout);
  SetOperand(b.forward.lse, const_cast<void*>(lse.data), lse.dtype, LseAsRows(lse.layout));
  SetOperand(b.grad_out, grad_out.data, grad_out.dtype, grad_out.layout);
  SetOperand(b.grad_q, grad_query.data, grad_query.dtype, grad_query.layout);
  SetOperand(b.grad_k, grad_key.data, grad_key.dtype, grad_key.layout);
  SetOperand(b.grad_v, grad_value.data, grad_value.dtype, grad_value.layout);
  if (grad_sinks != nullptr) {
    b.grad_sinks.data = grad_sinks->data;
    b.grad_sinks.dtype = grad_sinks->dtype;
    b.grad_sinks.stride[0] = grad_sinks->layout.strides[0];
  }
  return b;
}

void AttachOutputs(Problem& p, int query_rank, const MutableTensorView& out,
                   const MutableTensorView* lse, const std::vector<TensorView>& inputs,
                   const std::vector<const char*>& input_names) {
  CheckResultDType("out", out.dtype, p);
  CheckOutput("out", out, OutShape(p, query_rank));
  if (lse) {
    CheckLseDType(lse->dtype, p);
    CheckOutput("lse", *lse, LseShape(p, query_rank));
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const TensorView& in = inputs[i];
    if (Overlaps(out.data, out.dtype, out.layout, in.data, in.dtype, in.layout)) {
      Fail("out overlaps ", input_names[i], " in memory; outputs must not alias inputs");
    }
    if (lse && Overlaps(lse->data, lse->dtype, lse->layout, in.data, in.dtype, in.layout)) {
      Fail("lse overlaps ", input_names[i], " in memory; outputs must not alias inputs");
    }
  }
  if (lse && Overlaps(out.data, out.dtype, out.layout, lse->data, lse->dtype, lse->layout)) {
    Fail("lse overlaps out in memory");
  }

  SetOperand(p.out, out.data, out.dtype, out.layout);
  if (lse) SetOperand(p.lse, lse->data, lse->dtype, LseAsRows(lse->layout));
}

bool SelfOverlapping(const Layout& layout) { return SelfOverlaps(layout); }

}  // namespace sdpa::internal
