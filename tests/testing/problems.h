// Building NaiveProblems for the tests: random operands and masks, the float32 view of a problem,
// the strided layouts every table of cases also runs in, and the problem whose result tells which
// keys each query row attends to. Only data: the expected values come from NaiveAttention.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/harness.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace sdpa_test {

// Random Q [B, H, Lq, D] and K [B, Hkv, Lkv, D] uniform in [-qk_range, qk_range), V [B, Hkv, Lkv,
// Dv] in [-1, 1), all float32-representable so that both element types see the same values;
// the default scale.
inline NaiveProblem RandomProblem(std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
                                  std::int64_t q_len, std::int64_t kv_len, std::int64_t head_dim,
                                  std::int64_t v_dim, std::uint64_t seed, double qk_range = 1.0) {
  NaiveProblem p;
  p.query =
      Array::Uniform({batch, heads, q_len, head_dim}, seed, -qk_range, qk_range).RoundedToFloat();
  p.key = Array::Uniform({batch, kv_heads, kv_len, head_dim}, seed + 1, -qk_range, qk_range)
              .RoundedToFloat();
  p.value = Array::Uniform({batch, kv_heads, kv_len, v_dim}, seed + 2).RoundedToFloat();
  p.scale = DefaultScale(head_dim);
  return p;
}

// A mask of `shape` attending to each position with probability `keep`: a bool mask holds 1 or
// 0, an additive one a bias uniform in [-3, 3) or -inf.
inline Array RandomMask(MaskType type, const std::vector<std::int64_t>& shape, double keep,
                        std::uint64_t seed) {
  Random random(seed);
  Array mask(shape);
  for (double& x : mask.values) {
    const bool attend = random.Bernoulli(keep);
    if (type == MaskType::kBool) {
      x = attend ? 1.0 : 0.0;
    } else {
      x = attend ? random.Uniform(-3.0, 3.0) : -std::numeric_limits<double>::infinity();
    }
  }
  return mask;
}

// The same problem with every operand rounded to float32 (what a float32 call sees).
inline NaiveProblem RoundedToFloat(NaiveProblem p) {
  p.query = p.query.RoundedToFloat();
  p.key = p.key.RoundedToFloat();
  p.value = p.value.RoundedToFloat();
  p.mask = p.mask.RoundedToFloat();
  return p;
}

// Where a table of cases places its operands: contiguous, or every operand in an unusual layout
// (see StridedLayouts).
enum class Storage { kContiguous, kStrided };

inline const char* StorageName(Storage storage) {
  return storage == Storage::kContiguous ? "contiguous" : "strided";
}
// How gtest prints the parameter in a failure.
inline void PrintTo(Storage storage, std::ostream* os) { *os << StorageName(storage); }

// Query stored [B, Lq, H, D], key with padded rows and every other element, value and a mask of
// rank `mask_rank` (0: none) stored back to front, out stored [B, Lq, H, Dv] with padding, lse
// stored [Lq, B, H] with batch reversed: every stride the library must honour at once.
inline Layouts LayoutsFor(Storage storage, std::size_t mask_rank) {
  Layouts l;
  if (storage == Storage::kContiguous) return l;
  l.query.order = {0, 2, 1, 3};
  l.key.step = 2;
  l.key.pad = 3;
  l.value.reversed = {2, 3};
  if (mask_rank > 0) l.mask.reversed = {static_cast<int>(mask_rank) - 1};
  l.out.order = {0, 2, 1, 3};
  l.out.pad = 1;
  l.lse.order = {2, 0, 1};
  l.lse.reversed = {0};
  return l;
}

// "<case>_<dtype>_<storage>_<backend>": the test name of one case of a table.
inline std::string CaseTestName(const std::string& case_name, sdpa::DType dtype, Storage storage,
                                sdpa::Backend backend) {
  return case_name + "_" + sdpa::DTypeName(dtype) + "_" + StorageName(storage) + "_" +
         sdpa::BackendName(backend);
}

// ---- Which keys a row attends to ----------------------------------------------------------

// Replaces the operands of `p` by [1, 1, q_len, 1] zero queries, random keys and values
// v[j] = 2^j (j the packed position): every visible key then gets the same weight, so
// out = (sum of 2^j over visible j) / count and lse = log(count) identify the set exactly
// (VisibleKeysOf reads it back).
inline void UseKeyIdentifyingOperands(NaiveProblem& p, std::int64_t q_len, std::int64_t kv_len) {
  p.query = Array({1, 1, q_len, 1});
  p.key = Array::Uniform({1, 1, kv_len, 1}, 7);
  p.value = Array({1, 1, kv_len, 1});
  for (std::int64_t j = 0; j < kv_len; ++j) {
    p.value({0, 0, j, 0}) = std::ldexp(1.0, static_cast<int>(j));
  }
}

using Keys = std::vector<std::vector<int>>;

// The keys each query row attended to, from the float64 result of a problem built by
// UseKeyIdentifyingOperands. A row without keys must have out = 0.
inline Keys VisibleKeysOf(const NaiveResult& r) {
  const std::int64_t q_len = r.lse.shape[2];
  Keys keys(static_cast<std::size_t>(q_len));
  for (std::int64_t i = 0; i < q_len; ++i) {
    const double lse = r.lse({0, 0, i}), out = r.out({0, 0, i, 0});
    if (lse == -std::numeric_limits<double>::infinity()) {
      EXPECT_EQ(out, 0.0) << "row " << i << " has no key but a non-zero output";
      continue;
    }
    const double count = std::round(std::exp(lse));
    EXPECT_NEAR(lse, std::log(count), 1e-14) << "row " << i;
    const auto bits = static_cast<std::uint64_t>(std::llround(out * count));
    for (int j = 0; j < 64; ++j) {
      if ((bits >> j) & 1u) keys[static_cast<std::size_t>(i)].push_back(j);
    }
  }
  return keys;
}

}  // namespace sdpa_test
