// The log-sum-exp merge of partial attention results over disjoint key sets.
//
// A partial is what Forward with lse returns for one key subset B of a query row:
//   out_B = Σ_{j∈B} exp(s_j - lse_B) v_j   (normalised)      lse_B = log Σ_{j∈B} exp(s_j)
// For disjoint B_1 .. B_S covering the row's keys, the row's result over all of them is
//   M   = max_s lse_s
//   L   = Σ_s exp(lse_s - M)                  (each term in (0, 1], the largest is 1)
//   out = Σ_s exp(lse_s - M) · out_s / L
//   lse = M + log L
// exactly (up to rounding). An empty partial (every key masked, or no keys) is lse = -inf with
// any out (it is never read): it is the identity. A row whose partials are all empty gives out = 0
// and lse = -inf, the Forward rule for a row with no visible key. lse = +inf or NaN in a partial
// is not a valid partial and gives NaN in that row. The merge is associative and commutative up
// to rounding; the order of the partials is the only thing that changes the rounding, so a fixed
// order gives bitwise identical results.
//
// Accumulation is in T (float for float32, bfloat16 and float16 partials, double for float64),
// the compute type of Forward: one merge adds at most S roundings of T per element to the
// partials' own error.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sdpa::internal {

// Merges `parts` partials of one row of `v_dim` values: part_out(s) points to partial s's row,
// part_lse(s) is its lse. Writes out[0 .. v_dim) and returns the merged lse. `out` may be one of
// the partials' rows: it is written only after every partial has been read (the caller passes a
// scratch row `acc` of v_dim values).
template <typename T, class OutOf, class LseOf>
T MergeRow(std::int64_t parts, std::int64_t v_dim, OutOf&& part_out, LseOf&& part_lse, T* acc) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  // pass 1: the largest lse
  T big_m = kNegInf;
  for (std::int64_t s = 0; s < parts; ++s) {
    const T lse = part_lse(s);
    big_m = std::isnan(lse) ? lse : std::max(big_m, lse);
    if (std::isnan(big_m)) break;
  }
  std::fill(acc, acc + v_dim, T(0));
  if (big_m == kNegInf) return kNegInf;  // every partial empty: out = 0
  // pass 2: weighted sum of the non-empty partials
  T big_l = 0;
  for (std::int64_t s = 0; s < parts; ++s) {
    const T lse = part_lse(s);
    if (lse == kNegInf) continue;
    const T w = std::exp(lse - big_m);
    big_l += w;
    part_out(s, w, acc);  // acc[x] += w · out_s[x]
  }
  // pass 3: normalise
  const T inv = T(1) / big_l;
  for (std::int64_t x = 0; x < v_dim; ++x) acc[x] *= inv;
  return big_m + std::log(big_l);
}

// Running two-way form: merges the partial (out_b, lse_b) into the accumulator (acc, acc_lse)
// in place, acc = acc ⊕ b. Starts from acc_lse = -inf (acc ignored). The weights are
// exp(lse_a - lse) and exp(lse_b - lse) with lse = max + log1p(exp(-|lse_a - lse_b|)).
template <typename T, typename S>
void MergeInto(T* acc, T& acc_lse, const S* out_b, T lse_b, std::int64_t v_dim) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  if (lse_b == kNegInf) return;
  if (acc_lse == kNegInf) {
    for (std::int64_t x = 0; x < v_dim; ++x) acc[x] = static_cast<T>(out_b[x]);
    acc_lse = lse_b;
    return;
  }
  const T big = std::max(acc_lse, lse_b);
  const T lse = big + std::log1p(std::exp(-std::abs(acc_lse - lse_b)));
  const T wa = std::exp(acc_lse - lse), wb = std::exp(lse_b - lse);
  for (std::int64_t x = 0; x < v_dim; ++x) acc[x] = wa * acc[x] + wb * static_cast<T>(out_b[x]);
  acc_lse = lse;
}

}  // namespace sdpa::internal
