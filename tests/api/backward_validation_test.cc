// Every way to call Backward and AttentionBackward wrongly: the exception type, its message, and
// that nothing was written. Each case mutates one valid call.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/bad_call.h"
#include "testing/expect.h"

namespace {

using sdpa::DType;
using sdpa::MutableTensorView;
using sdpa::TensorView;

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();

// Memory for one call. Every buffer has room to spare so that a mutated view never reaches
// outside it, even if validation wrongly let it through.
struct Memory {
  static constexpr std::size_t kSize = 1024;
  std::vector<float> query, key, value, out, lse, grad_out, grad_query, grad_key, grad_value;
  std::vector<double> f64;
  std::unique_ptr<bool[]> mask;

  Memory()
      : query(kSize, 0.25f),
        key(kSize, 0.5f),
        value(kSize, 0.75f),
        out(kSize, 0.75f),
        lse(kSize, 1.5f),
        grad_out(kSize, 1.0f),
        grad_query(kSize, 777.0f),
        grad_key(kSize, 777.0f),
        grad_value(kSize, 777.0f),
        f64(kSize, 1.0),
        mask(new bool[kSize]) {
    std::fill(mask.get(), mask.get() + kSize, true);
  }
  // Every byte of every buffer, to check that a failed call wrote nothing.
  std::vector<unsigned char> Bytes() const {
    std::vector<unsigned char> bytes;
    for (const auto* v :
         {&query, &key, &value, &out, &lse, &grad_out, &grad_query, &grad_key, &grad_value}) {
      sdpa_test::AppendBytes(bytes, v->data(), v->size());
    }
    sdpa_test::AppendBytes(bytes, f64.data(), f64.size());
    sdpa_test::AppendBytes(bytes, mask.get(), kSize);
    return bytes;
  }
};

// The valid call every case starts from (float32):
//   query [2, 4, 3, 8], key [2, 2, 5, 8], value [2, 2, 5, 6], bool mask [2, 1, 3, 5],
//   out [2, 4, 3, 6], lse [2, 4, 3], grad_out [2, 4, 3, 6],
//   grad_query [2, 4, 3, 8], grad_key [2, 2, 5, 8], grad_value [2, 2, 5, 6].
struct Call {
  TensorView query, key, value, out, lse, grad_out;
  MutableTensorView grad_query, grad_key, grad_value;
  sdpa::Options options;

  explicit Call(Memory& m)
      : query(m.query.data(), {2, 4, 3, 8}),
        key(m.key.data(), {2, 2, 5, 8}),
        value(m.value.data(), {2, 2, 5, 6}),
        out(m.out.data(), {2, 4, 3, 6}),
        lse(m.lse.data(), {2, 4, 3}),
        grad_out(m.grad_out.data(), {2, 4, 3, 6}),
        grad_query(m.grad_query.data(), {2, 4, 3, 8}),
        grad_key(m.grad_key.data(), {2, 2, 5, 8}),
        grad_value(m.grad_value.data(), {2, 2, 5, 6}) {
    options.mask = TensorView(m.mask.get(), {2, 1, 3, 5});
  }
};

// kInputs also fail in AttentionBackward (it validates the same inputs); kOutputs (the
// gradients) only concern the caller's gradient views.
using Scope = sdpa_test::Scope;
using Kind = sdpa_test::ErrorKind;
using BadCall = sdpa_test::BadCall<Call, Memory>;

// The gradient view of a call with this name.
MutableTensorView& Grad(Call& c, const std::string& name) {
  if (name == "grad_query") return c.grad_query;
  if (name == "grad_key") return c.grad_key;
  return c.grad_value;
}

// Each gradient pointed into the memory of each input, and into the other gradients.
std::vector<BadCall> OverlapCalls() {
  const std::vector<std::pair<const char*, std::function<void*(Memory&)>>> inputs = {
      {"query", [](Memory& m) -> void* { return &m.query[40]; }},
      {"key", [](Memory& m) -> void* { return &m.key[159]; }},  // key's last element
      {"value", [](Memory& m) -> void* { return m.value.data(); }},
      {"options.mask", [](Memory& m) -> void* { return m.mask.get() + 8; }},
      {"out", [](Memory& m) -> void* { return &m.out[100]; }},
      {"lse", [](Memory& m) -> void* { return &m.lse[23]; }},  // lse's last element
      {"grad_out", [](Memory& m) -> void* { return m.grad_out.data(); }},
  };
  const char* grads[] = {"grad_query", "grad_key", "grad_value"};
  std::vector<BadCall> calls;
  for (const char* grad : grads) {
    for (const auto& [input, where] : inputs) {
      BadCall bad;
      bad.name = std::string(grad) + "_overlaps_" +
                 (std::string(input) == "options.mask" ? "mask" : input);
      const std::string grad_name = grad;
      const auto place = where;
      bad.mutate = [grad_name, place](Call& c, Memory& m) { Grad(c, grad_name).data = place(m); };
      bad.message =
          "sdpa: " + grad_name + " overlaps " + input + " in memory; outputs must not alias inputs";
      bad.scope = Scope::kOutputs;
      calls.push_back(bad);
    }
  }
  const std::pair<const char*, const char*> pairs[] = {
      {"grad_key", "grad_query"}, {"grad_value", "grad_query"}, {"grad_value", "grad_key"}};
  for (const auto& [later, earlier] : pairs) {
    BadCall bad;
    bad.name = std::string(later) + "_overlaps_" + earlier;
    const std::string later_name = later, earlier_name = earlier;
    bad.mutate = [later_name, earlier_name](Call& c, Memory&) {
      // The later gradient's first element is the earlier one's fifth.
      Grad(c, later_name).data = static_cast<float*>(Grad(c, earlier_name).data) + 4;
    };
    bad.message = "sdpa: " + later_name + " overlaps " + earlier_name + " in memory";
    bad.scope = Scope::kOutputs;
    calls.push_back(bad);
  }
  // The last element of grad_value is the first element of query.
  BadCall edge;
  edge.name = "grad_value_last_element_is_query_first";
  edge.mutate = [](Call& c, Memory& m) {
    c.query.data = &m.query[500];
    c.grad_value.data = &m.query[500 - 119];
  };
  edge.message = "sdpa: grad_value overlaps query in memory";
  edge.scope = Scope::kOutputs;
  calls.push_back(edge);
  return calls;
}

std::vector<BadCall> BadCalls() {
  const Kind kDType = Kind::kDType, kValue = Kind::kValue;
  const Scope kGrad = Scope::kOutputs;
  std::vector<BadCall> calls = {
      // The forward's inputs and options are validated as by Forward.
      {"query_rank_1", [](Call& c, Memory& m) { c.query = TensorView(m.query.data(), {192}); },
       "sdpa: query has rank 1 but must have rank 2 (seq, dim), 3 (heads, seq, dim) or 4"},
      {"key_rank_differs",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {4, 5, 8});
       },
       "sdpa: key has rank 3 but query has rank 4"},
      {"key_head_dim",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {2, 2, 5, 4});
       },
       "sdpa: key.shape[3] (head_dim) is 4 but query.shape[3] is 8"},
      {"value_float64",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.f64.data(), {2, 2, 5, 6});
       },
       "sdpa: value.dtype is float64 but query.dtype is float32", kDType},
      {"heads_not_multiple_of_kv_heads",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {2, 3, 5, 8});
         c.value = TensorView(m.value.data(), {2, 3, 5, 6});
       },
       "sdpa: query.shape[1] (heads) is 4, which is not a multiple of key.shape[1] (kv_heads) 3"},
      {"mask_kv_len",
       [](Call& c, Memory& m) {
         c.options.mask = TensorView(m.mask.get(), {2, 1, 3, 4});
       },
       "sdpa: options.mask.shape[3] is 4 but must be 1 or 5 (kv_len) to broadcast to "
       "[2, 4, 3, 5]"},
      {"scale_nan",
       [](Call& c, Memory&) { c.options.scale = std::numeric_limits<double>::quiet_NaN(); },
       "sdpa: options.scale is nan but must be finite"},
      // out [.., Lq, Dv]: dtype, shape, rank, data.
      {"out_float64",
       [](Call& c, Memory& m) {
         c.out = TensorView(m.f64.data(), {2, 4, 3, 6});
       },
       "sdpa: out.dtype is float64 but query.dtype is float32", kDType},
      {"out_bool", [](Call& c, Memory&) { c.out.dtype = DType::kBool; },
       "sdpa: out.dtype is bool but query.dtype is float32", kDType},
      {"out_shape",
       [](Call& c, Memory& m) {
         c.out = TensorView(m.out.data(), {2, 4, 3, 8});
       },
       "sdpa: out.shape is [2, 4, 3, 8] but must be [2, 4, 3, 6]"},
      {"out_rank",
       [](Call& c, Memory& m) {
         c.out = TensorView(m.out.data(), {8, 3, 6});
       },
       "sdpa: out has rank 3 but must have rank 4"},
      {"out_null", [](Call& c, Memory&) { c.out.data = nullptr; },
       "sdpa: out.data is null but out has 144 elements"},
      {"out_negative_size", [](Call& c, Memory&) { c.out.layout.shape[2] = -3; },
       "sdpa: out.shape[2] is -3 but must be >= 0"},
      // lse [.., Lq].
      {"lse_float64",
       [](Call& c, Memory& m) {
         c.lse = TensorView(m.f64.data(), {2, 4, 3});
       },
       "sdpa: lse.dtype is float64 but query.dtype is float32", kDType},
      {"lse_shape",
       [](Call& c, Memory& m) {
         c.lse = TensorView(m.lse.data(), {2, 4, 4});
       },
       "sdpa: lse.shape is [2, 4, 4] but must be [2, 4, 3]"},
      {"lse_rank",
       [](Call& c, Memory& m) {
         c.lse = TensorView(m.lse.data(), {2, 4, 3, 1});
       },
       "sdpa: lse has rank 4 but must have rank 3"},
      {"lse_null", [](Call& c, Memory&) { c.lse.data = nullptr; },
       "sdpa: lse.data is null but lse has 24 elements"},
      {"lse_stride_overflows", [](Call& c, Memory&) { c.lse.layout.strides[0] = kMax / 2; },
       "sdpa: lse with shape [2, 4, 3] is too large"},
      // grad_out [.., Lq, Dv].
      {"grad_out_float64",
       [](Call& c, Memory& m) {
         c.grad_out = TensorView(m.f64.data(), {2, 4, 3, 6});
       },
       "sdpa: grad_out.dtype is float64 but query.dtype is float32", kDType},
      {"grad_out_shape",
       [](Call& c, Memory& m) {
         c.grad_out = TensorView(m.grad_out.data(), {2, 4, 3, 8});
       },
       "sdpa: grad_out.shape is [2, 4, 3, 8] but must be [2, 4, 3, 6]"},
      {"grad_out_rank", [](Call& c, Memory&) { c.grad_out.layout.rank = 5; },
       "sdpa: grad_out has rank 5 but must have rank 4"},
      {"grad_out_null", [](Call& c, Memory&) { c.grad_out.data = nullptr; },
       "sdpa: grad_out.data is null but grad_out has 144 elements"},
      // grad_query [.., H, Lq, D].
      {"grad_query_float64",
       [](Call& c, Memory& m) {
         c.grad_query = MutableTensorView(m.f64.data(), {2, 4, 3, 8});
       },
       "sdpa: grad_query.dtype is float64 but query.dtype is float32", kDType, kGrad},
      {"grad_query_shape",
       [](Call& c, Memory& m) {
         c.grad_query = MutableTensorView(m.grad_query.data(), {2, 4, 3, 6});
       },
       "sdpa: grad_query.shape is [2, 4, 3, 6] but must be [2, 4, 3, 8]", kValue, kGrad},
      {"grad_query_rank",
       [](Call& c, Memory& m) {
         c.grad_query = MutableTensorView(m.grad_query.data(), {8, 3, 8});
       },
       "sdpa: grad_query has rank 3 but must have rank 4", kValue, kGrad},
      {"grad_query_null", [](Call& c, Memory&) { c.grad_query.data = nullptr; },
       "sdpa: grad_query.data is null but grad_query has 192 elements", kValue, kGrad},
      {"grad_query_negative_size", [](Call& c, Memory&) { c.grad_query.layout.shape[1] = -4; },
       "sdpa: grad_query.shape[1] is -4 but must be >= 0", kValue, kGrad},
      {"grad_query_zero_stride", [](Call& c, Memory&) { c.grad_query.layout.strides[1] = 0; },
       "sdpa: grad_query has overlapping elements: shape [2, 4, 3, 8] with strides [96, 0, 8, 1] "
       "maps two indices to one address",
       kValue, kGrad},
      // grad_key [.., Hkv, Lkv, D].
      {"grad_key_float64",
       [](Call& c, Memory& m) {
         c.grad_key = MutableTensorView(m.f64.data(), {2, 2, 5, 8});
       },
       "sdpa: grad_key.dtype is float64 but key.dtype is float32", kDType, kGrad},
      {"grad_key_bool", [](Call& c, Memory&) { c.grad_key.dtype = DType::kBool; },
       "sdpa: grad_key.dtype is bool but key.dtype is float32", kDType, kGrad},
      {"grad_key_shape_of_query_heads",
       [](Call& c, Memory& m) {
         c.grad_key = MutableTensorView(m.grad_key.data(), {2, 4, 5, 8});
       },
       "sdpa: grad_key.shape is [2, 4, 5, 8] but must be [2, 2, 5, 8]", kValue, kGrad},
      {"grad_key_rank",
       [](Call& c, Memory& m) {
         c.grad_key = MutableTensorView(m.grad_key.data(), {4, 5, 8});
       },
       "sdpa: grad_key has rank 3 but must have rank 4", kValue, kGrad},
      {"grad_key_null", [](Call& c, Memory&) { c.grad_key.data = nullptr; },
       "sdpa: grad_key.data is null but grad_key has 160 elements", kValue, kGrad},
      {"grad_key_interleaved_rows", [](Call& c, Memory&) { c.grad_key.layout.strides[2] = 4; },
       "sdpa: grad_key has overlapping elements: shape [2, 2, 5, 8] with strides [80, 40, 4, 1] "
       "maps two indices to one address",
       kValue, kGrad},
      {"grad_key_stride_overflows",
       [](Call& c, Memory&) { c.grad_key.layout.strides[0] = kMax / 4; },
       "sdpa: grad_key with shape [2, 2, 5, 8] is too large", kValue, kGrad},
      // grad_value [.., Hkv, Lkv, Dv].
      {"grad_value_float64",
       [](Call& c, Memory& m) {
         c.grad_value = MutableTensorView(m.f64.data(), {2, 2, 5, 6});
       },
       "sdpa: grad_value.dtype is float64 but value.dtype is float32", kDType, kGrad},
      {"grad_value_shape_of_key",
       [](Call& c, Memory& m) {
         c.grad_value = MutableTensorView(m.grad_value.data(), {2, 2, 5, 8});
       },
       "sdpa: grad_value.shape is [2, 2, 5, 8] but must be [2, 2, 5, 6]", kValue, kGrad},
      {"grad_value_rank",
       [](Call& c, Memory& m) {
         c.grad_value = MutableTensorView(m.grad_value.data(), {2, 2, 30});
       },
       "sdpa: grad_value has rank 3 but must have rank 4", kValue, kGrad},
      {"grad_value_null", [](Call& c, Memory&) { c.grad_value.data = nullptr; },
       "sdpa: grad_value.data is null but grad_value has 120 elements", kValue, kGrad},
      {"grad_value_zero_inner_stride", [](Call& c, Memory&) { c.grad_value.layout.strides[3] = 0; },
       "sdpa: grad_value has overlapping elements", kValue, kGrad},
      {"grad_value_negative_stride_overlapping",
       [](Call& c, Memory&) {
         c.grad_value.data = static_cast<float*>(c.grad_value.data) + 200;
         c.grad_value.layout.strides[2] = -3;
       },
       "sdpa: grad_value has overlapping elements", kValue, kGrad},
  };
  for (BadCall& overlap : OverlapCalls()) calls.push_back(std::move(overlap));
  return calls;
}

void CallBackward(const Call& c) {
  sdpa::Backward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, c.grad_query, c.grad_key,
                 c.grad_value, c.options);
}

class BadBackwardTest : public ::testing::TestWithParam<BadCall> {};

TEST_P(BadBackwardTest, ThrowsAndWritesNothing) {
  const BadCall& bad = GetParam();
  for (sdpa::Backend backend : {sdpa::Backend::kReference, sdpa::Backend::kCpu}) {
    Memory m;
    Call c(m);
    c.options.backend = backend;
    bad.mutate(c, m);
    const std::vector<unsigned char> before = m.Bytes();
    EXPECT_TRUE(sdpa_test::ThrowsExpected(bad, [&] { CallBackward(c); }))
        << sdpa::BackendName(backend);
    EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
    if (bad.scope == Scope::kInputs) {
      EXPECT_TRUE(sdpa_test::ThrowsExpected(bad, [&] {
        sdpa::AttentionBackward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, c.options);
      })) << sdpa::BackendName(backend);
      EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Validation, BadBackwardTest, ::testing::ValuesIn(BadCalls()),
                         sdpa_test::BadCallName());

// ---- Single cases -----------------------------------------------------------------------------

TEST(BackwardValidation, BaseCallIsValid) {
  Memory m;
  const Call c(m);
  // out and lse from the forward (the CPU engine reads them).
  sdpa::Forward(c.query, c.key, c.value, MutableTensorView(m.out.data(), {2, 4, 3, 6}),
                MutableTensorView(m.lse.data(), {2, 4, 3}), c.options);
  EXPECT_NO_THROW(CallBackward(c));
  // Every key is the same and every value 0.75: P is uniform, dP = Δ, so dq = dk = 0 (up to
  // rounding); each key gets 1/5 of the dO of the 2 query heads × 3 rows that read it: dv = 6/5.
  EXPECT_NEAR(m.grad_query[0], 0.0f, 1e-6f);
  EXPECT_NEAR(m.grad_key[0], 0.0f, 1e-6f);
  EXPECT_FLOAT_EQ(m.grad_value[0], 1.2f);
  EXPECT_EQ(m.grad_value[120], 777.0f) << "written past grad_value";
}

// Messages index dimensions as the caller passed them (rank 2 here).
TEST(BackwardValidation, MessagesUseTheCallersRank) {
  Memory m;
  const TensorView q(m.query.data(), {3, 8}), k(m.key.data(), {5, 8}), v(m.value.data(), {5, 6});
  const TensorView out(m.out.data(), {3, 6}), dout(m.grad_out.data(), {3, 6});
  const MutableTensorView dq(m.grad_query.data(), {3, 8}), dv(m.grad_value.data(), {5, 6});
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(q, k, v, out, TensorView(m.lse.data(), {4}), dout, dq,
                       MutableTensorView(m.grad_key.data(), {5, 8}), dv);
      },
      "sdpa: lse.shape is [4] but must be [3]"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(q, k, v, out, TensorView(m.lse.data(), {3}), dout, dq,
                       MutableTensorView(m.grad_key.data(), {5, 6}), dv);
      },
      "sdpa: grad_key.shape is [5, 6] but must be [5, 8]"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(q, k, v, out, TensorView(m.lse.data(), {1, 3}), dout, dq,
                       MutableTensorView(m.grad_key.data(), {5, 8}), dv);
      },
      "sdpa: lse has rank 2 but must have rank 1"));
}

// Gradients may sit right next to the inputs (one buffer holding everything), and the inputs may
// alias each other (grad_out = out, for L = ||out||² / 2).
TEST(BackwardValidation, AdjacentGradientsAndAliasedInputsAreAccepted) {
  std::vector<double> memory(64 + 40 + 40 + 64 + 8 + 64 + 40 + 40, 0.5);
  double* p = memory.data();
  double* q = p;
  double* k = q + 64;
  double* v = k + 40;
  double* out = v + 40;
  double* lse = out + 64;
  double* dq = lse + 8;
  double* dk = dq + 64;
  double* dv = dk + 40;
  sdpa::Forward(TensorView(q, {8, 8}), TensorView(k, {5, 8}), TensorView(v, {5, 8}),
                MutableTensorView(out, {8, 8}), MutableTensorView(lse, {8}));
  EXPECT_NO_THROW(sdpa::Backward(
      TensorView(q, {8, 8}), TensorView(k, {5, 8}), TensorView(v, {5, 8}), TensorView(out, {8, 8}),
      TensorView(lse, {8}), TensorView(out, {8, 8}), MutableTensorView(dq, {8, 8}),
      MutableTensorView(dk, {5, 8}), MutableTensorView(dv, {5, 8})));
  EXPECT_EQ(dv + 40, memory.data() + memory.size());
}

TEST(BackwardValidation, FailedCallPrintsNothing) {
  // Even with SDPA_VERBOSE set: the plan is printed only after validation.
  const sdpa_test::ScopedEnv verbose("SDPA_VERBOSE", "1");
  Memory m;
  Call c(m);
  c.grad_key.data = m.query.data();
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_THROW(CallBackward(c), sdpa::Error);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "");
}

}  // namespace
