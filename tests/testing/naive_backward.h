// An independent naive attention backward, written from docs/semantics.md ("Backward") without
// looking at src/reference/ or src/cpu/, in a chosen arithmetic type: long double for an oracle,
// float for "a plain float32 implementation" (the yardstick of the float32 tolerances). It shares
// no code with the library.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "sdpa/options.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace sdpa_test {

// Gradients of one call, as dense rank-4 arrays.
struct NaiveGradients {
  Array query;  // [B, H,   Lq,  D]
  Array key;    // [B, Hkv, Lkv, D]
  Array value;  // [B, Hkv, Lkv, Dv]
};

// The textbook backward of softmax attention, every operation in `Real`, for each query row
// (b, h, i) with kv head g = h / (H / Hkv) and its visible keys J (as in NaiveAttention):
//   pass 1: s_j = scale·q·k_j + bias_j, P_j = exp(s_j - m) / Σ_J exp(s_k - m)
//   pass 2: dP_j = dO·v_j, Δ = Σ_J P_j dP_j
//   pass 3: dS_j = P_j (dP_j - Δ); dq += scale Σ_J dS_j k_j; dk_j += scale dS_j q; dv_j += P_j dO
// A row with no visible key contributes nothing (dq row 0). grad_out is [B, H, Lq, Dv].
template <typename Real>
NaiveGradients NaiveBackward(const NaiveProblem& p, const Array& grad_out) {
  const std::int64_t B = p.query.shape[0], H = p.query.shape[1], Lq = p.query.shape[2],
                     D = p.query.shape[3];
  const std::int64_t Hkv = p.key.shape[1], Lkv = p.key.shape[2], Dv = p.value.shape[3];
  Array mask;
  if (p.mask_type != MaskType::kNone) mask = BroadcastTo(p.mask, {B, H, Lq, Lkv});
  const auto real = [](double x) { return static_cast<Real>(x); };
  const Real scale = real(p.scale);

  // Accumulate in Real, round to double once at the end.
  std::vector<Real> dq(static_cast<std::size_t>(p.query.size()), Real(0));
  std::vector<Real> dk(static_cast<std::size_t>(p.key.size()), Real(0));
  std::vector<Real> dv(static_cast<std::size_t>(p.value.size()), Real(0));
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / Hkv);
      for (std::int64_t i = 0; i < Lq; ++i) {
        // pass 1
        std::vector<std::int64_t> keys;
        std::vector<Real> probs;
        for (std::int64_t j = 0; j < Lkv; ++j) {
          if (p.causal == sdpa::Causal::kTopLeft && j > i) continue;
          if (p.causal == sdpa::Causal::kBottomRight && j > i + Lkv - Lq) continue;
          Real bias = 0;
          if (p.mask_type == MaskType::kBool && mask({b, h, i, j}) == 0.0) continue;
          if (p.mask_type == MaskType::kAdditive) {
            if (mask({b, h, i, j}) == -std::numeric_limits<double>::infinity()) continue;
            bias = real(mask({b, h, i, j}));
          }
          Real dot = 0;
          for (std::int64_t d = 0; d < D; ++d) {
            dot += real(p.query({b, h, i, d})) * real(p.key({b, g, j, d}));
          }
          keys.push_back(j);
          probs.push_back(scale * dot + bias);
        }
        if (keys.empty()) continue;
        Real m = -std::numeric_limits<Real>::infinity();
        for (Real s : probs) m = s > m ? s : m;
        Real sum = 0;
        for (Real& s : probs) sum += (s = std::exp(s - m));
        for (Real& s : probs) s /= sum;

        // pass 2
        std::vector<Real> dp(keys.size());
        Real delta = 0;
        for (std::size_t n = 0; n < keys.size(); ++n) {
          Real acc = 0;
          for (std::int64_t e = 0; e < Dv; ++e) {
            acc += real(grad_out({b, h, i, e})) * real(p.value({b, g, keys[n], e}));
          }
          dp[n] = acc;
          delta += probs[n] * acc;
        }

        // pass 3
        for (std::size_t n = 0; n < keys.size(); ++n) {
          const Real ds = probs[n] * (dp[n] - delta);
          for (std::int64_t d = 0; d < D; ++d) {
            dq[p.query.Flat({b, h, i, d})] += scale * ds * real(p.key({b, g, keys[n], d}));
            dk[p.key.Flat({b, g, keys[n], d})] += scale * ds * real(p.query({b, h, i, d}));
          }
          for (std::int64_t e = 0; e < Dv; ++e) {
            dv[p.value.Flat({b, g, keys[n], e})] += probs[n] * real(grad_out({b, h, i, e}));
          }
        }
      }
    }
  }
  NaiveGradients r{Array(p.query.shape), Array(p.key.shape), Array(p.value.shape)};
  const auto store = [](const std::vector<Real>& from, Array& to) {
    for (std::size_t n = 0; n < from.size(); ++n) to.values[n] = static_cast<double>(from[n]);
  };
  store(dq, r.query);
  store(dk, r.key);
  store(dv, r.value);
  return r;
}

}  // namespace sdpa_test
