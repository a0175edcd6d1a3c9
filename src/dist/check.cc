// Validation of the distributed entry points (dist/check.h).
#include "dist/check.h"

#include <string>

#include "api/validate.h"
#include "core/fail.h"

namespace sdpa::dist {
namespace {

using internal::Fail;
using internal::FailDType;
using internal::ShapeString;

void CheckFloat32Rank4(const char* function, const char* name, const TensorView& view) {
  internal::CheckView(name, view.data, view.dtype, view.layout, 4, 4);
  if (view.dtype != DType::kFloat32) {
    FailDType(function, ": ", name, ".dtype is ", DTypeName(view.dtype),
              " but must be float32 (distributed attention computes and sends float32)");
  }
}

// The signature every rank sends: [ok, batch, heads, kv_heads, head_dim, v_dim, len, layout].
constexpr int kFields = 8;
const char* const kFieldNames[kFields] = {"",
                                          "query.shape[0] (batch)",
                                          "query.shape[1] (heads)",
                                          "key.shape[1] (kv_heads)",
                                          "query.shape[3] (head_dim)",
                                          "value.shape[3] (v_dim)",
                                          "query.shape[2] (the shard's length)",
                                          "layout"};

}  // namespace

Shard CheckShard(const char* function, const TensorView& query, const TensorView& key,
                 const TensorView& value) {
  CheckFloat32Rank4(function, "query", query);
  CheckFloat32Rank4(function, "key", key);
  CheckFloat32Rank4(function, "value", value);
  Shard s;
  s.batch = query.dim(0);
  s.heads = query.dim(1);
  s.len = query.dim(2);
  s.head_dim = query.dim(3);
  s.kv_heads = key.dim(1);
  s.v_dim = value.dim(3);
  if (key.dim(0) != s.batch)
    Fail("key.shape[0] (batch) is ", key.dim(0), " but query.shape[0] is ", s.batch);
  if (value.dim(0) != s.batch) {
    Fail("value.shape[0] (batch) is ", value.dim(0), " but query.shape[0] is ", s.batch);
  }
  if (value.dim(1) != s.kv_heads) {
    Fail("value.shape[1] (kv_heads) is ", value.dim(1), " but key.shape[1] is ", s.kv_heads);
  }
  if (key.dim(3) != s.head_dim) {
    Fail("key.shape[3] (head_dim) is ", key.dim(3), " but query.shape[3] is ", s.head_dim);
  }
  for (const auto& [name, view] : {std::pair<const char*, const TensorView*>{"key", &key},
                                   std::pair<const char*, const TensorView*>{"value", &value}}) {
    if (view->dim(2) != s.len) {
      Fail(name, ".shape[2] (the shard's length) is ", view->dim(2), " but query.shape[2] is ",
           s.len,
           ": the ranks shard one sequence, so a rank's query, key and value shards hold "
           "the same positions");
    }
  }
  if (s.kv_heads == 0 || s.heads % s.kv_heads != 0) {
    Fail("query.shape[1] (heads) is ", s.heads,
         " but must be a multiple of key.shape[1] (kv_heads) ", s.kv_heads);
  }
  return s;
}

void CheckOptions(const char* function, const Options& options, bool ulysses) {
  const char* other = ulysses ? "" : " (UlyssesForward takes it)";
  if (options.mask) {
    Fail(function,
         ": options.mask is not supported: every rank would need the mask of the full "
         "sequence; express it as causal, or use Forward on one process");
  }
  if (!ulysses && options.window) {
    Fail(function,
         ": options.window is not supported by ring attention: a block of keys from "
         "another rank needs a window offset Forward's options cannot express",
         other);
  }
  if (!ulysses && !options.alibi_slopes.empty()) {
    Fail(function,
         ": options.alibi_slopes is not supported by ring attention: the bias depends "
         "on global positions a block of keys from another rank cannot express",
         other);
  }
  if (!options.cu_seqlens_q.empty() || !options.cu_seqlens_k.empty()) {
    Fail(function, ": options.cu_seqlens_q / cu_seqlens_k (varlen) are not supported");
  }
  if (options.dropout_p != 0.0) {
    Fail(function, ": options.dropout_p is ", options.dropout_p,
         " but must be 0: dropout's Philox stream is keyed by positions and heads of one call");
  }
  if (options.custom != nullptr) {
    Fail(function, ": custom score_mod / mask_mod functions are not supported");
  }
}

void CheckTensor(const char* name, const void* data, DType dtype, const Layout& layout,
                 const std::vector<std::int64_t>& shape) {
  const int rank = static_cast<int>(shape.size());
  internal::CheckView(name, data, dtype, layout, rank, rank);
  if (dtype != DType::kFloat32) {
    FailDType(name, ".dtype is ", DTypeName(dtype), " but must be float32");
  }
  if (std::vector<std::int64_t>(layout.shape, layout.shape + rank) != shape) {
    Fail(name, ".shape is ", ShapeString(layout), " but must be ", ShapeString(shape));
  }
}

void CheckOutput(const char* name, const MutableTensorView& view,
                 const std::vector<std::int64_t>& shape, const std::vector<TensorView>& inputs,
                 const std::vector<const char*>& input_names) {
  CheckTensor(name, view.data, view.dtype, view.layout, shape);
  if (internal::SelfOverlapping(view.layout)) {
    Fail(name, " has overlapping elements: shape ", ShapeString(view.layout),
         " maps two indices to one address");
  }
  for (std::size_t n = 0; n < inputs.size(); ++n) {
    if (internal::Overlaps(view.data, view.dtype, view.layout, inputs[n].data, inputs[n].dtype,
                           inputs[n].layout)) {
      Fail(name, " overlaps ", input_names[n]);
    }
  }
}

void CheckBackwardTensors(const Shard& s, const TensorView& query, const TensorView& key,
                          const TensorView& value, const TensorView& out, const TensorView& lse,
                          const TensorView& grad_out, const MutableTensorView& grad_query,
                          const MutableTensorView& grad_key, const MutableTensorView& grad_value) {
  CheckTensor("out", out.data, out.dtype, out.layout, {s.batch, s.heads, s.len, s.v_dim});
  CheckTensor("lse", lse.data, lse.dtype, lse.layout, {s.batch, s.heads, s.len});
  CheckTensor("grad_out", grad_out.data, grad_out.dtype, grad_out.layout,
              {s.batch, s.heads, s.len, s.v_dim});
  const std::vector<TensorView> inputs = {query, key, value, out, lse, grad_out};
  const std::vector<const char*> names = {"query", "key", "value", "out", "lse", "grad_out"};
  CheckOutput("grad_query", grad_query, {s.batch, s.heads, s.len, s.head_dim}, inputs, names);
  CheckOutput("grad_key", grad_key, {s.batch, s.kv_heads, s.len, s.head_dim},
              {query, key, value, out, lse, grad_out, TensorView(grad_query)},
              {"query", "key", "value", "out", "lse", "grad_out", "grad_query"});
  CheckOutput("grad_value", grad_value, {s.batch, s.kv_heads, s.len, s.v_dim},
              {query, key, value, out, lse, grad_out, TensorView(grad_query), TensorView(grad_key)},
              {"query", "key", "value", "out", "lse", "grad_out", "grad_query", "grad_key"});
}

Agreed Agree(const Comm& comm, const char* function, SequenceLayout layout,
             const std::function<Shard()>& local) {
  std::string error;
  Shard shard;
  try {
    shard = local();
  } catch (const Error& e) {
    error = e.what();
  }
  const std::int64_t mine[kFields] = {
      error.empty() ? 1 : 0, shard.batch, shard.heads, shard.kv_heads,
      shard.head_dim,        shard.v_dim, shard.len,   static_cast<std::int64_t>(layout)};
  std::vector<std::int64_t> all(static_cast<std::size_t>(kFields * comm.size()));
  Check(MPI_Allgather(mine, kFields, MPI_INT64_T, all.data(), kFields, MPI_INT64_T, comm.get()),
        "MPI_Allgather");
  auto at = [&](int rank, int field) {
    return all[static_cast<std::size_t>(rank * kFields + field)];
  };
  if (!error.empty()) throw Error(error);
  for (int r = 0; r < comm.size(); ++r) {
    if (at(r, 0) == 0) {
      Fail(function, ": the arguments of rank ", r, " are invalid (that rank's error says why)");
    }
  }
  for (int r = 1; r < comm.size(); ++r) {
    for (int f = 1; f < kFields; ++f) {
      if (f == 6) continue;  // lengths may differ (contiguous)
      if (at(r, f) != at(0, f)) {
        if (f == 7) {
          Fail(function, ": layout is ", SequenceLayoutName(static_cast<SequenceLayout>(at(0, f))),
               " on rank 0 but ", SequenceLayoutName(static_cast<SequenceLayout>(at(r, f))),
               " on rank ", r);
        }
        Fail(function, ": ", kFieldNames[f], " is ", at(0, f), " on rank 0 but ", at(r, f),
             " on rank ", r, "; every rank must hold the same batch, heads and dims");
      }
    }
  }
  Agreed agreed;
  agreed.shard = shard;
  for (int r = 0; r < comm.size(); ++r) agreed.lengths.push_back(at(r, 6));
  if (layout == SequenceLayout::kZigzag) {
    for (int r = 0; r < comm.size(); ++r) {
      if (at(r, 6) != at(0, 6) || at(r, 6) % 2 != 0) {
        Fail(function,
             ": the zigzag layout needs every shard of the same even length (the "
             "sequence in 2P equal chunks), but query.shape[2] is ",
             at(0, 6), " on rank 0 and ", at(r, 6), " on rank ", r);
      }
    }
  }
  return agreed;
}

void CheckHeadsDivide(const char* function, const Shard& shard, int world) {
  if (shard.heads % world != 0 || shard.kv_heads % world != 0) {
    Fail(function, ": query.shape[1] (heads) is ", shard.heads, " and key.shape[1] (kv_heads) is ",
         shard.kv_heads, " but both must be multiples of the number of ranks, ", world,
         ": Ulysses gives each rank heads / P query heads and kv_heads / P kv heads");
  }
}

}  // namespace sdpa::dist
