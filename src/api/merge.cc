// MergePartials (sdpa/merge.h): validate every view, then merge row by row with core/merge.h.
// One pass over the partials' bytes on the calling thread: it reads S·Dv values per row and
// writes Dv, so it is bound by memory bandwidth, not by arithmetic.
#include "sdpa/merge.h"

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "api/validate.h"
#include "core/fail.h"
#include "core/merge.h"
#include "core/types.h"
#include "sdpa/error.h"

namespace sdpa {
namespace {

using internal::Fail;
using internal::FailDType;
using internal::ShapeString;

std::vector<std::int64_t> ShapeOf(const Layout& l) {
  return std::vector<std::int64_t>(l.shape, l.shape + l.rank);
}

std::string Indexed(const char* name, std::size_t s) {
  return std::string(name) + "[" + std::to_string(s) + "]";
}

bool IsFloat(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat64 || d == DType::kBFloat16 ||
         d == DType::kFloat16;
}

bool SameView(const void* a_data, DType a_dtype, const Layout& a, const void* b_data, DType b_dtype,
              const Layout& b) {
  if (a_data != b_data || a_dtype != b_dtype || a.rank != b.rank) return false;
  for (int d = 0; d < a.rank; ++d) {
    if (a.shape[d] != b.shape[d] || a.strides[d] != b.strides[d]) return false;
  }
  return true;
}

// A view of rank r as rank `rank4` (leading size-1 dimensions), element strides.
struct View4 {
  const void* data = nullptr;
  std::int64_t shape[4] = {1, 1, 1, 1};
  std::int64_t stride[4] = {0, 0, 0, 0};
};
View4 As4(const void* data, const Layout& l, int rank4) {
  View4 v;
  v.data = data;
  const int pad = rank4 - l.rank;
  for (int d = 0; d < l.rank; ++d) {
    v.shape[pad + d] = l.shape[d];
    v.stride[pad + d] = l.strides[d];
  }
  return v;
}

void CheckOutView(const char* name, const MutableTensorView& view, DType dtype,
                  const std::vector<std::int64_t>& shape) {
  internal::CheckView(name, view.data, view.dtype, view.layout, static_cast<int>(shape.size()),
                      static_cast<int>(shape.size()));
  if (view.dtype != dtype) {
    FailDType(name, ".dtype is ", DTypeName(view.dtype), " but must be ", DTypeName(dtype));
  }
  if (ShapeOf(view.layout) != shape) {
    Fail(name, ".shape is ", ShapeString(view.layout), " but must be ", ShapeString(shape));
  }
  if (internal::SelfOverlapping(view.layout)) {
    Fail(name, " has overlapping elements: shape ", ShapeString(view.layout),
         " maps two indices to one address");
  }
}

// The output `name` may be exactly one of `inputs` (in place), else must not overlap any.
void CheckAliasing(const char* name, const MutableTensorView& view,
                   const std::vector<TensorView>& inputs, const char* inputs_name, bool may_alias) {
  for (std::size_t s = 0; s < inputs.size(); ++s) {
    const TensorView& in = inputs[s];
    if (may_alias && SameView(view.data, view.dtype, view.layout, in.data, in.dtype, in.layout)) {
      continue;
    }
    if (internal::Overlaps(view.data, view.dtype, view.layout, in.data, in.dtype, in.layout)) {
      Fail(name, " overlaps ", Indexed(inputs_name, s),
           may_alias ? " without being the same view (same data, dtype, shape and strides)" : "");
    }
  }
}

template <typename S, typename T>
void MergeTyped(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                const MutableTensorView& out, const MutableTensorView* lse) {
  std::vector<View4> o, l;
  for (const TensorView& v : outs) o.push_back(As4(v.data, v.layout, 4));
  for (const TensorView& v : lses) l.push_back(As4(v.data, v.layout, 3));
  const View4 out4 = As4(out.data, out.layout, 4);
  View4 lse4;
  if (lse != nullptr) lse4 = As4(lse->data, lse->layout, 3);
  const std::int64_t parts = static_cast<std::int64_t>(outs.size());
  const std::int64_t batch = out4.shape[0], heads = out4.shape[1], q_len = out4.shape[2],
                     v_dim = out4.shape[3];
  std::vector<T> acc(static_cast<std::size_t>(v_dim));
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t i = 0; i < q_len; ++i) {
        auto part_lse = [&](std::int64_t s) {
          const View4& v = l[static_cast<std::size_t>(s)];
          return static_cast<const T*>(v.data)[b * v.stride[0] + h * v.stride[1] + i * v.stride[2]];
        };
        auto part_out = [&](std::int64_t s, T w, T* sum) {
          const View4& v = o[static_cast<std::size_t>(s)];
          const S* row =
              static_cast<const S*>(v.data) + b * v.stride[0] + h * v.stride[1] + i * v.stride[2];
          for (std::int64_t x = 0; x < v_dim; ++x) {
            sum[x] += w * internal::Widen<T>(row[x * v.stride[3]]);
          }
        };
        const T merged = internal::MergeRow<T>(parts, v_dim, part_out, part_lse, acc.data());
        S* row = static_cast<S*>(const_cast<void*>(out4.data)) + b * out4.stride[0] +
                 h * out4.stride[1] + i * out4.stride[2];
        for (std::int64_t x = 0; x < v_dim; ++x) {
          row[x * out4.stride[3]] = internal::Narrow<S>(acc[static_cast<std::size_t>(x)]);
        }
        if (lse != nullptr) {
          static_cast<T*>(const_cast<void*>(
              lse4.data))[b * lse4.stride[0] + h * lse4.stride[1] + i * lse4.stride[2]] = merged;
        }
      }
    }
  }
}

}  // namespace

void MergePartials(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                   const MutableTensorView& out, const MutableTensorView* lse) {
  if (lses.size() != outs.size()) {
    Fail("lses has ", lses.size(), " partials but outs has ", outs.size());
  }
  // The result's shape and dtype: those of outs[0], or of out when there is no partial.
  const Layout& ref = outs.empty() ? out.layout : outs[0].layout;
  const DType dtype = outs.empty() ? out.dtype : outs[0].dtype;
  const char* ref_name = outs.empty() ? "out" : "outs[0]";
  internal::CheckLayout(ref_name, dtype, ref, 2, 4);
  if (!IsFloat(dtype)) {
    FailDType(ref_name, ".dtype is ", DTypeName(dtype),
              " but must be float32, float64, bfloat16 or float16");
  }
  const int rank = ref.rank;
  const std::vector<std::int64_t> out_shape = ShapeOf(ref);
  const std::vector<std::int64_t> lse_shape(out_shape.begin(), out_shape.end() - 1);
  const DType compute = dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  for (std::size_t s = 0; s < outs.size(); ++s) {
    const std::string name = Indexed("outs", s);
    internal::CheckView(name.c_str(), outs[s].data, outs[s].dtype, outs[s].layout, rank, rank);
    if (outs[s].dtype != dtype) {
      FailDType(name, ".dtype is ", DTypeName(outs[s].dtype), " but outs[0].dtype is ",
                DTypeName(dtype));
    }
    if (ShapeOf(outs[s].layout) != out_shape) {
      Fail(name, ".shape is ", ShapeString(outs[s].layout), " but outs[0].shape is ",
           ShapeString(out_shape));
    }
    const std::string lname = Indexed("lses", s);
    internal::CheckView(lname.c_str(), lses[s].data, lses[s].dtype, lses[s].layout, rank - 1,
                        rank - 1);
    if (lses[s].dtype != compute) {
      FailDType(lname, ".dtype is ", DTypeName(lses[s].dtype), " but must be ", DTypeName(compute),
                " (partials of ", DTypeName(dtype), ")");
    }
    if (ShapeOf(lses[s].layout) != lse_shape) {
      Fail(lname, ".shape is ", ShapeString(lses[s].layout), " but must be ",
           ShapeString(lse_shape), " (", ref_name, ".shape without its last dimension)");
    }
  }
  CheckOutView("out", out, dtype, out_shape);
  CheckAliasing("out", out, outs, "outs", /*may_alias=*/true);
  CheckAliasing("out", out, lses, "lses", /*may_alias=*/false);
  if (lse != nullptr) {
    CheckOutView("lse", *lse, compute, lse_shape);
    CheckAliasing("lse", *lse, lses, "lses", /*may_alias=*/true);
    CheckAliasing("lse", *lse, outs, "outs", /*may_alias=*/false);
    if (internal::Overlaps(out.data, out.dtype, out.layout, lse->data, lse->dtype, lse->layout)) {
      Fail("lse overlaps out");
    }
  }
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    if constexpr (std::is_same_v<S, double>) {
      MergeTyped<double, double>(outs, lses, out, lse);
    } else {
      MergeTyped<S, float>(outs, lses, out, lse);
    }
  });
}

MergedPartials MergePartials(const std::vector<TensorView>& outs,
                             const std::vector<TensorView>& lses) {
  if (outs.empty()) Fail("outs is empty: at least one partial is needed for its shape");
  internal::CheckLayout("outs[0]", outs[0].dtype, outs[0].layout, 2, 4);
  if (!IsFloat(outs[0].dtype)) {
    FailDType("outs[0].dtype is ", DTypeName(outs[0].dtype),
              " but must be float32, float64, bfloat16 or float16");
  }
  const std::vector<std::int64_t> shape = ShapeOf(outs[0].layout);
  MergedPartials r;
  r.out = Tensor(outs[0].dtype, shape);
  r.lse = Tensor(outs[0].dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32,
                 std::vector<std::int64_t>(shape.begin(), shape.end() - 1));
  MutableTensorView lse = r.lse.mutable_view();
  MergePartials(outs, lses, r.out.mutable_view(), &lse);
  return r;
}

}  // namespace sdpa
