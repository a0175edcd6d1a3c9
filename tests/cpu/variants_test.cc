// The engine's variant steps (window and varlen ranges, softcap, ALiBi, sinks, dropout, custom
// score_mod / mask_mod / block_mask) against the float64 reference on every SIMD target: the
// vector code (Tanh, ALiBi lanes, the u64-lane Philox and its scalar fallback) differs per target,
// and tests/api/ runs only the best one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cpu/on_tuning.h"
#include "cpu/simd.h"
#include "sdpa/sdpa.h"
#include "testing/tensors.h"

namespace {

using sdpa::Backend;
using sdpa::Tensor;

class VariantsOnTarget : public sdpa_test::OnTargetAndTuning {};

// A random problem with a random subset of the variants, sized around the tiles (96 rows,
// 128 keys) and the split-key threshold.
struct VariantProblem {
  Tensor q, k, v, grad_out;
  sdpa::Options options;
  std::string description;
};

template <typename T>
Tensor RandomTensor(const std::vector<std::int64_t>& shape, sdpa_test::Random& random) {
  Tensor t(sdpa::DTypeOf<T>(), shape);
  for (std::int64_t i = 0; i < t.size(); ++i)
    t.data<T>()[i] = static_cast<T>(random.Uniform(-1.5, 1.5));
  return t;
}

template <typename T>
VariantProblem MakeVariantProblem(std::uint64_t seed) {
  sdpa_test::Random random(seed);
  const auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return lo +
           static_cast<std::int64_t>(random.NextBits() % static_cast<std::uint64_t>(hi - lo + 1));
  };
  VariantProblem vp;
  sdpa::Options& o = vp.options;
  const std::int64_t group = pick(1, 3), kv_heads = pick(1, 2), heads = group * kv_heads;
  std::int64_t batch = pick(1, 2), q_len = pick(0, 230), kv_len = pick(0, 300);
  if (pick(0, 5) == 0) {  // decode-like: few rows, many keys (split into chunks)
    q_len = pick(1, 3);
    kv_len = pick(1000, 1600);
  }
  if (pick(0, 2) == 0) {
    batch = 1;
    o.cu_seqlens_q = {0};
    o.cu_seqlens_k = {0};
    for (std::int64_t s = pick(1, 4); s > 0; --s) {
      o.cu_seqlens_q.push_back(o.cu_seqlens_q.back() + pick(0, 110));
      o.cu_seqlens_k.push_back(o.cu_seqlens_k.back() + pick(0, 140));
    }
    q_len = o.cu_seqlens_q.back();
    kv_len = o.cu_seqlens_k.back();
  }
  o.causal = static_cast<sdpa::Causal>(pick(0, 2));
  if (pick(0, 1) == 0) {
    sdpa::Window window;
    if (pick(0, 2) != 0) window.left = pick(0, 150);
    if (pick(0, 2) != 0) window.right = pick(0, 150);
    o.window = window;
  }
  if (pick(0, 2) == 0) {
    for (std::int64_t h = 0; h < heads; ++h)
      o.alibi_slopes.push_back(0.002 * static_cast<double>(pick(1, 40)));
  }
  if (pick(0, 2) == 0) o.softcap = 0.5 * static_cast<double>(pick(1, 12));
  if (pick(0, 2) == 0) {
    for (std::int64_t h = 0; h < heads; ++h) {
      o.sinks.push_back(pick(0, 4) == 0 ? -std::numeric_limits<double>::infinity()
                                        : 0.5 * static_cast<double>(pick(-4, 4)));
    }
  }
  if (pick(0, 2) == 0) {
    o.dropout_p = 0.1 * static_cast<double>(pick(1, 7));
    o.seed = random.NextBits();
  }
  const std::int64_t head_dim = pick(1, 72), v_dim = pick(1, 40);
  vp.q = RandomTensor<T>({batch, heads, q_len, head_dim}, random);
  vp.k = RandomTensor<T>({batch, kv_heads, kv_len, head_dim}, random);
  vp.v = RandomTensor<T>({batch, kv_heads, kv_len, v_dim}, random);
  vp.grad_out = RandomTensor<T>({batch, heads, q_len, v_dim}, random);
  vp.description = "seed " + std::to_string(seed) + ": B=" + std::to_string(batch) +
                   " H=" + std::to_string(heads) + " Hkv=" + std::to_string(kv_heads) +
                   " Lq=" + std::to_string(q_len) + " Lkv=" + std::to_string(kv_len) +
                   " D=" + std::to_string(head_dim) + " Dv=" + std::to_string(v_dim);
  return vp;
}

// Largest |a - b| where both are finite; -1 when their non-finite positions differ.
template <typename T>
double MaxDifference(const Tensor& a, const Tensor& b) {
  double worst = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    const double x = a.data<T>()[i], y = b.data<T>()[i];
    if (std::isfinite(x) != std::isfinite(y) || (!std::isfinite(x) && !(x == y))) return -1;
    if (std::isfinite(x)) worst = std::max(worst, std::abs(x - y));
  }
  return worst;
}

struct Results {
  sdpa::AttentionResult forward;
  sdpa::Gradients gradients;
};

// Forward and backward on one backend; the backward gets the reference forward's out and lse,
// so both backends differentiate the same point.
Results RunOn(const VariantProblem& vp, Backend backend, const sdpa::AttentionResult* at) {
  sdpa::Options options = vp.options;
  options.backend = backend;
  Results r;
  r.forward = sdpa::AttentionWithLse(vp.q.view(), vp.k.view(), vp.v.view(), options);
  const sdpa::AttentionResult& point = at != nullptr ? *at : r.forward;
  r.gradients = sdpa::AttentionBackward(vp.q.view(), vp.k.view(), vp.v.view(), point.out.view(),
                                        point.lse.view(), vp.grad_out.view(), options);
  return r;
}

template <typename T>
void ExpectEngineMatchesReference(std::uint64_t first_seed, int problems, double tolerance) {
  for (std::uint64_t seed = first_seed; seed < first_seed + static_cast<std::uint64_t>(problems);
       ++seed) {
    const VariantProblem vp = MakeVariantProblem<T>(seed);
    const Results reference = RunOn(vp, Backend::kReference, nullptr);
    const Results engine = RunOn(vp, Backend::kCpu, &reference.forward);
    const std::pair<const char*, double> checks[] = {
        {"out", MaxDifference<T>(engine.forward.out, reference.forward.out)},
        {"lse", MaxDifference<T>(engine.forward.lse, reference.forward.lse)},
        {"grad_query",
         MaxDifference<T>(engine.gradients.grad_query, reference.gradients.grad_query)},
        {"grad_key", MaxDifference<T>(engine.gradients.grad_key, reference.gradients.grad_key)},
        {"grad_value",
         MaxDifference<T>(engine.gradients.grad_value, reference.gradients.grad_value)},
        {"grad_sinks",
         MaxDifference<T>(engine.gradients.grad_sinks, reference.gradients.grad_sinks)},
    };
    for (const auto& [name, difference] : checks) {
      EXPECT_GE(difference, 0) << name << " non-finite where the reference is not, "
                               << vp.description;
      EXPECT_LE(difference, tolerance) << name << ", " << vp.description;
    }
  }
}

TEST_P(VariantsOnTarget, Float64MatchesReference) {
  // Same formulas, float64 throughout: only summation order differs.
  ExpectEngineMatchesReference<double>(1000, 60, 1e-11);
}

TEST_P(VariantsOnTarget, Float32MatchesReference) {
  // Inputs in [-1.5, 1.5], logits below ~25 in magnitude: float32 rounding of scores, lse and the
  // accumulations (measured worst ~1e-4 on gradients summed over up to ~300 rows).
  ExpectEngineMatchesReference<float>(2000, 40, 5e-4);
}

TEST_P(VariantsOnTarget, CustomFunctionsMatchReference) {
  sdpa_test::Random random(77);
  const auto score_mod = [](auto s, std::int64_t, std::int64_t h, std::int64_t i, std::int64_t j) {
    using std::tanh;
    return 3.0 * tanh(s / 3.0) - 0.01 * static_cast<double>((i - j) * (i - j) % 7 + h);
  };
  const auto mask_mod = [](std::int64_t, std::int64_t h, std::int64_t i, std::int64_t j) {
    return (i / 40 == j / 40) || (j + h) % 3 != 0;  // blocks on the diagonal, a sparse rest
  };
  const auto block_mask = [](std::int64_t, std::int64_t, std::int64_t q_begin, std::int64_t q_end,
                             std::int64_t k_begin, std::int64_t k_end) {
    // Honest but coarse: blocks fully inside one 40-block of the diagonal are full.
    const bool one_block = q_begin / 40 == (q_end - 1) / 40 && k_begin / 40 == (k_end - 1) / 40 &&
                           q_begin / 40 == k_begin / 40;
    return one_block ? sdpa::BlockKind::kFull : sdpa::BlockKind::kPartial;
  };
  const auto custom = sdpa::MakeCustom(score_mod, mask_mod, block_mask);
  VariantProblem vp;
  vp.q = RandomTensor<double>({1, 4, 200, 24}, random);
  vp.k = RandomTensor<double>({1, 2, 260, 24}, random);
  vp.v = RandomTensor<double>({1, 2, 260, 16}, random);
  vp.grad_out = RandomTensor<double>({1, 4, 200, 16}, random);
  vp.options = custom.With(vp.options);
  vp.options.causal = sdpa::Causal::kBottomRight;
  const Results reference = RunOn(vp, Backend::kReference, nullptr);
  const Results engine = RunOn(vp, Backend::kCpu, &reference.forward);
  EXPECT_LE(MaxDifference<double>(engine.forward.out, reference.forward.out), 1e-11);
  EXPECT_LE(MaxDifference<double>(engine.forward.lse, reference.forward.lse), 1e-11);
  EXPECT_LE(MaxDifference<double>(engine.gradients.grad_query, reference.gradients.grad_query),
            1e-11);
  EXPECT_LE(MaxDifference<double>(engine.gradients.grad_key, reference.gradients.grad_key), 1e-11);
  EXPECT_LE(MaxDifference<double>(engine.gradients.grad_value, reference.gradients.grad_value),
            1e-11);
}

TEST_P(VariantsOnTarget, ForcedTargetTakesEffect) {
  EXPECT_EQ(sdpa::cpu::ActiveSimdTarget(), Target());
}

INSTANTIATE_TEST_SUITE_P(AllTargets, VariantsOnTarget,
                         ::testing::ValuesIn(sdpa::cpu::SimdTargets()), sdpa_test::ParamName);
INSTANTIATE_TEST_SUITE_P(Tunings, VariantsOnTarget, ::testing::ValuesIn(sdpa_test::TunedTargets()),
                         sdpa_test::ParamName);

}  // namespace
