// An independent naive attention in long double, written from docs/semantics.md without looking
// at src/reference/. Tests compare the library against it; it shares no code with the library.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "sdpa/options.h"
#include "testing/tensors.h"

namespace sdpa_test {

enum class MaskType { kNone, kBool, kAdditive };

// One attention problem in dense rank-4 arrays.
struct NaiveProblem {
  Array query;  // [B, H,   Lq,  D]
  Array key;    // [B, Hkv, Lkv, D]
  Array value;  // [B, Hkv, Lkv, Dv]
  double scale = 1.0;
  sdpa::Causal causal = sdpa::Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  Array mask;  // any shape broadcastable to [B, H, Lq, Lkv]; bool masks hold 1 (attend) or 0
};

struct NaiveResult {
  Array out;  // [B, H, Lq, Dv]
  Array lse;  // [B, H, Lq]
};

// For each query row (b, h, i), with kv head g = h / (H / Hkv):
//   visible(j) = causal rule (top-left j <= i, bottom-right j <= i + Lkv - Lq)
//                and mask (bool: mask != 0; additive: mask != -inf)
//   s_j = scale * sum_d q[i,d] k[j,d] + bias_j       over visible j only
//   lse = m + log(sum_j exp(s_j - m)), m = max_j s_j;  out = sum_j exp(s_j - lse) v[j]
//   no visible key: out = 0, lse = -inf.
inline NaiveResult NaiveAttention(const NaiveProblem& p) {
  using Real = long double;
  const std::int64_t B = p.query.shape[0], H = p.query.shape[1], Lq = p.query.shape[2],
                     D = p.query.shape[3];
  const std::int64_t Hkv = p.key.shape[1], Lkv = p.key.shape[2], Dv = p.value.shape[3];
  Array mask;
  if (p.mask_type != MaskType::kNone) mask = BroadcastTo(p.mask, {B, H, Lq, Lkv});

  NaiveResult r{Array({B, H, Lq, Dv}), Array({B, H, Lq})};
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / Hkv);
      for (std::int64_t i = 0; i < Lq; ++i) {
        std::vector<std::int64_t> keys;
        std::vector<Real> logits;
        for (std::int64_t j = 0; j < Lkv; ++j) {
          if (p.causal == sdpa::Causal::kTopLeft && j > i) continue;
          if (p.causal == sdpa::Causal::kBottomRight && j > i + Lkv - Lq) continue;
          Real bias = 0;
          if (p.mask_type == MaskType::kBool && mask({b, h, i, j}) == 0.0) continue;
          if (p.mask_type == MaskType::kAdditive) {
            if (mask({b, h, i, j}) == -std::numeric_limits<double>::infinity()) continue;
            bias = mask({b, h, i, j});
          }
          Real dot = 0;
          for (std::int64_t d = 0; d < D; ++d) {
            dot +=
                static_cast<Real>(p.query({b, h, i, d})) * static_cast<Real>(p.key({b, g, j, d}));
          }
          keys.push_back(j);
          logits.push_back(static_cast<Real>(p.scale) * dot + bias);
        }
        if (keys.empty()) {
          r.lse({b, h, i}) = -std::numeric_limits<double>::infinity();
          continue;  // out stays 0
        }
        // A NaN or +inf logit makes sum (and so the row) NaN through exp(NaN) or exp(inf - inf).
        Real m = -std::numeric_limits<Real>::infinity();
        for (Real s : logits) m = s > m ? s : m;
        Real sum = 0;
        for (Real s : logits) sum += std::exp(s - m);
        const Real lse = m + std::log(sum);
        r.lse({b, h, i}) = static_cast<double>(lse);
        for (std::int64_t e = 0; e < Dv; ++e) {
          Real acc = 0;
          for (std::size_t n = 0; n < keys.size(); ++n) {
            acc += std::exp(logits[n] - m) / sum * static_cast<Real>(p.value({b, g, keys[n], e}));
          }
          r.out({b, h, i, e}) = static_cast<double>(acc);
        }
      }
    }
  }
  return r;
}

}  // namespace sdpa_test
