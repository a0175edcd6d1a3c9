// An independent naive attention in long double, written from docs/semantics.md and the comments
// of sdpa/options.h and sdpa/custom.h without looking at src/reference/. Tests compare the library
// against it; it shares no code with the library (not even the dropout generator: NaivePhilox
// below is its own Philox4x32-10, checked against Random123's known answers).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <vector>

#include "sdpa/options.h"
#include "testing/tensors.h"

namespace sdpa_test {

enum class MaskType { kNone, kBool, kAdditive };

// score_mod(score, b, h, i, j) and mask_mod(b, h, i, j) of sdpa/custom.h, in long double: b is the
// batch entry (the sequence with varlen), h the query head, i and j positions within the sequence.
using NaiveScoreMod = std::function<long double(long double score, std::int64_t b, std::int64_t h,
                                                std::int64_t i, std::int64_t j)>;
using NaiveMaskMod =
    std::function<bool(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j)>;

// One attention problem in dense rank-4 arrays, with the variants of sdpa/options.h.
struct NaiveProblem {
  Array query;  // [B, H,   Lq,  D]
  Array key;    // [B, Hkv, Lkv, D]
  Array value;  // [B, Hkv, Lkv, Dv]
  double scale = 1.0;
  sdpa::Causal causal = sdpa::Causal::kNone;
  MaskType mask_type = MaskType::kNone;
  Array mask;  // any shape broadcastable to [B, H, Lq, Lkv]; bool masks hold 1 (attend) or 0

  // Sliding window: each side unbounded when unset.
  std::optional<std::int64_t> window_left, window_right;
  std::vector<double> alibi_slopes;  // [H] or empty
  std::optional<double> softcap;     // > 0 when set
  std::vector<double> sinks;         // [H] or empty; -inf = no sink
  // Packed sequences (B = 1): sequence s holds query rows [cu_seqlens_q[s], cu_seqlens_q[s+1])
  // and keys [cu_seqlens_k[s], cu_seqlens_k[s+1]). Empty = each batch entry is one sequence.
  std::vector<std::int64_t> cu_seqlens_q, cu_seqlens_k;
  double dropout_p = 0.0;
  std::uint64_t seed = 0;
  NaiveScoreMod score_mod;  // empty = none
  NaiveMaskMod mask_mod;    // empty = none
};

struct NaiveResult {
  Array out;  // [B, H, Lq, Dv]
  Array lse;  // [B, H, Lq]
};

// ---- Philox4x32-10 (Salmon et al., SC'11), written from the paper's description ------------

using PhiloxBlock = std::array<std::uint32_t, 4>;
using PhiloxKey = std::array<std::uint32_t, 2>;

// Ten rounds; each multiplies words 0 and 2 by the round constants, swaps the halves of the
// products into place and mixes in the key, which is bumped by the Weyl constants between rounds.
inline PhiloxBlock NaivePhilox(PhiloxBlock counter, PhiloxKey key) {
  const auto mul_hi_lo = [](std::uint32_t a, std::uint32_t b, std::uint32_t* hi,
                            std::uint32_t* lo) {
    const std::uint64_t product = std::uint64_t{a} * std::uint64_t{b};
    *hi = static_cast<std::uint32_t>(product >> 32);
    *lo = static_cast<std::uint32_t>(product & 0xFFFFFFFFu);
  };
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] = static_cast<std::uint32_t>(key[0] + 0x9E3779B9u);
      key[1] = static_cast<std::uint32_t>(key[1] + 0xBB67AE85u);
    }
    std::uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(0xD2511F53u, counter[0], &hi0, &lo0);
    mul_hi_lo(0xCD9E8D57u, counter[2], &hi1, &lo1);
    counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
  }
  return counter;
}

// Dropout of sdpa/options.h: element (b, h, i, j) (b the batch entry or sequence, i and j
// positions within the sequence) is dropped when word j % 4 of Philox(counter (j / 4, i, h, b),
// key (low, high 32 bits of seed)) is below round(p · 2^32).
inline bool NaiveDropoutKept(double p, std::uint64_t seed, std::int64_t b, std::int64_t h,
                             std::int64_t i, std::int64_t j) {
  const PhiloxBlock words = NaivePhilox(
      {static_cast<std::uint32_t>(j / 4), static_cast<std::uint32_t>(i),
       static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(b)},
      {static_cast<std::uint32_t>(seed & 0xFFFFFFFFu), static_cast<std::uint32_t>(seed >> 32)});
  const long double threshold = std::round(static_cast<long double>(p) * 4294967296.0L);
  return static_cast<long double>(words[static_cast<std::size_t>(j % 4)]) >= threshold;
}

// ---- Scores of one query row ----------------------------------------------------------------

// A query row placed in its sequence.
struct NaiveRowPlace {
  std::int64_t sequence = 0;  // b, or the packed sequence s
  std::int64_t i = 0;         // row within the sequence
  std::int64_t q_len = 0;     // the sequence's query rows
  std::int64_t k_begin = 0;   // its first key (a position in key's dimension 2)
  std::int64_t k_len = 0;     // its keys
};

inline NaiveRowPlace PlaceRow(const NaiveProblem& p, std::int64_t b, std::int64_t row) {
  NaiveRowPlace place;
  if (p.cu_seqlens_q.empty()) {
    place.sequence = b;
    place.i = row;
    place.q_len = p.query.shape[2];
    place.k_len = p.key.shape[2];
    return place;
  }
  for (std::size_t s = 0; s + 1 < p.cu_seqlens_q.size(); ++s) {
    if (p.cu_seqlens_q[s] <= row && row < p.cu_seqlens_q[s + 1]) {
      place.sequence = static_cast<std::int64_t>(s);
      place.i = row - p.cu_seqlens_q[s];
      place.q_len = p.cu_seqlens_q[s + 1] - p.cu_seqlens_q[s];
      place.k_begin = p.cu_seqlens_k[s];
      place.k_len = p.cu_seqlens_k[s + 1] - p.cu_seqlens_k[s];
      return place;
    }
  }
  return place;  // not reached for valid offsets
}

// The visible keys of row (b, h, row) and their final logits, in long double.
struct NaiveRow {
  NaiveRowPlace place;
  std::vector<std::int64_t> keys;  // positions in key's dimension 2 (packed with varlen)
  std::vector<long double> logits;
  long double sink = -std::numeric_limits<long double>::infinity();
};

// For key j of the row's sequence (positions i, j within it, Lq and Lk its lengths):
//   visible = causal (top-left j <= i, bottom-right j <= i + Lk - Lq)
//             and window (diag - left <= j <= diag + right, diag = i for top-left causal, else
//                         i + Lk - Lq; an unset side is unbounded)
//             and mask (bool: != 0; additive: != -inf; indexed by packed positions)
//             and mask_mod(b, h, i, j)
//   s = scale · q·k  →  softcap·tanh(s / softcap)  →  − slope[h]·|i + Lk − Lq − j|
//     →  score_mod(s, b, h, i, j)  →  + additive mask
// `mask` is the problem's mask broadcast to [B, H, Lq, Lkv] (empty without one).
inline NaiveRow NaiveRowScores(const NaiveProblem& p, const Array& mask, std::int64_t b,
                               std::int64_t h, std::int64_t row) {
  using Real = long double;
  const std::int64_t H = p.query.shape[1], D = p.query.shape[3], Hkv = p.key.shape[1];
  const std::int64_t g = h / (H / Hkv);
  NaiveRow r;
  r.place = PlaceRow(p, b, row);
  const NaiveRowPlace& at = r.place;
  if (!p.sinks.empty()) r.sink = static_cast<Real>(p.sinks[static_cast<std::size_t>(h)]);
  const std::int64_t i = at.i, offset = at.k_len - at.q_len;
  const std::int64_t diag = p.causal == sdpa::Causal::kTopLeft ? i : i + offset;
  for (std::int64_t j = 0; j < at.k_len; ++j) {
    const std::int64_t key = at.k_begin + j;
    if (p.causal == sdpa::Causal::kTopLeft && j > i) continue;
    if (p.causal == sdpa::Causal::kBottomRight && j > i + offset) continue;
    // diag - j and j - diag are small, so sides up to INT64_MAX cannot overflow.
    if (p.window_left && diag - j > *p.window_left) continue;
    if (p.window_right && j - diag > *p.window_right) continue;
    Real bias = 0;
    if (p.mask_type == MaskType::kBool && mask({b, h, row, key}) == 0.0) continue;
    if (p.mask_type == MaskType::kAdditive) {
      if (mask({b, h, row, key}) == -std::numeric_limits<double>::infinity()) continue;
      bias = mask({b, h, row, key});
    }
    if (p.mask_mod && !p.mask_mod(at.sequence, h, i, j)) continue;
    Real dot = 0;
    for (std::int64_t d = 0; d < D; ++d) {
      dot += static_cast<Real>(p.query({b, h, row, d})) * static_cast<Real>(p.key({b, g, key, d}));
    }
    Real s = static_cast<Real>(p.scale) * dot;
    if (p.softcap) {
      const Real c = static_cast<Real>(*p.softcap);
      s = c * std::tanh(s / c);
    }
    if (!p.alibi_slopes.empty()) {
      const std::int64_t distance = i + offset - j;
      s -= static_cast<Real>(p.alibi_slopes[static_cast<std::size_t>(h)]) *
           static_cast<Real>(distance < 0 ? -distance : distance);
    }
    if (p.score_mod) s = p.score_mod(s, at.sequence, h, i, j);
    r.keys.push_back(key);
    r.logits.push_back(s + bias);
  }
  return r;
}

// For each query row (b, h, i), with kv head g = h / (H / Hkv), visible keys J and logits s_j
// (NaiveRowScores) and sink σ (-inf without one):
//   m = max(max_J s_j, σ);  l = Σ_J exp(s_j − m) + exp(σ − m);  lse = m + log(l)
//   P_j = exp(s_j − lse);   out = Σ_J P_j · keep_j / (1 − p) · v[j]
// where keep_j is NaiveDropoutKept (always 1 without dropout); lse does not see dropout.
// No visible key: out = 0 and lse = σ (so -inf without a sink).
inline NaiveResult NaiveAttention(const NaiveProblem& p) {
  using Real = long double;
  constexpr Real kInf = std::numeric_limits<Real>::infinity();
  const std::int64_t B = p.query.shape[0], H = p.query.shape[1], Lq = p.query.shape[2];
  const std::int64_t Hkv = p.key.shape[1], Lkv = p.key.shape[2], Dv = p.value.shape[3];
  Array mask;
  if (p.mask_type != MaskType::kNone) mask = BroadcastTo(p.mask, {B, H, Lq, Lkv});
  const Real keep_scale = 1.0L / (1.0L - static_cast<Real>(p.dropout_p));

  NaiveResult r{Array({B, H, Lq, Dv}), Array({B, H, Lq})};
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / Hkv);
      for (std::int64_t i = 0; i < Lq; ++i) {
        const NaiveRow row = NaiveRowScores(p, mask, b, h, i);
        // A NaN or +inf logit makes sum (and so the row) NaN through exp(NaN) or exp(inf - inf).
        Real m = row.sink;
        for (Real s : row.logits) m = s > m ? s : m;
        if (m == -kInf) {  // no visible key (or only -inf logits from score_mod) and no sink
          r.lse({b, h, i}) = static_cast<double>(row.sink);
          continue;  // out stays 0
        }
        Real sum = row.sink == -kInf ? 0 : std::exp(row.sink - m);
        for (Real s : row.logits) sum += std::exp(s - m);
        const Real lse = m + std::log(sum);
        r.lse({b, h, i}) = static_cast<double>(lse);
        for (std::int64_t e = 0; e < Dv; ++e) {
          Real acc = 0;
          for (std::size_t n = 0; n < row.keys.size(); ++n) {
            Real weight = std::exp(row.logits[n] - m) / sum;
            if (p.dropout_p > 0) {
              const std::int64_t j = row.keys[n] - row.place.k_begin;
              weight = NaiveDropoutKept(p.dropout_p, p.seed, row.place.sequence, h, row.place.i, j)
                           ? weight * keep_scale
                           : 0;
            }
            acc += weight * static_cast<Real>(p.value({b, g, row.keys[n], e}));
          }
          r.out({b, h, i, e}) = static_cast<double>(acc);
        }
      }
    }
  }
  return r;
}

}  // namespace sdpa_test
