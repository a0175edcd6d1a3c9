// Dropout on tiles of probabilities: the Philox4x32-10 rule of core/dropout.h, vectorised over
// rows, so that every backend and thread count drops the same elements.

#if defined(SDPA_CPU_DROPOUT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_DROPOUT_INL_H_
#undef SDPA_CPU_DROPOUT_INL_H_
#else
#define SDPA_CPU_DROPOUT_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/dropout.h"
#include "core/problem.h"
#include "cpu/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::MaskKind;
using internal::Problem;

// Philox4x32-10 (core/dropout.h) for a vector of rows at once: u64 lanes hold the 32-bit words,
// so that MulEven gives each lane's full 64-bit product (Highway 1.0 has no 32-bit MulHigh).
template <class D64, class V64 = hn::Vec<D64>>
void PhiloxRows(D64 d64, V64 (&c)[4], std::uint32_t key0, std::uint32_t key1) {
#if HWY_TARGET == HWY_SCALAR  // one lane, and no 32-bit view of it: the scalar generator
  const internal::PhiloxWords words = internal::Philox4x32(
      {static_cast<std::uint32_t>(hn::GetLane(c[0])), static_cast<std::uint32_t>(hn::GetLane(c[1])),
       static_cast<std::uint32_t>(hn::GetLane(c[2])),
       static_cast<std::uint32_t>(hn::GetLane(c[3]))},
      key0, key1);
  for (int w = 0; w < 4; ++w) c[w] = hn::Set(d64, words[static_cast<std::size_t>(w)]);
#else
  const hn::Repartition<std::uint32_t, D64> d32;
  const V64 mul0 = hn::Set(d64, 0xD2511F53u), mul1 = hn::Set(d64, 0xCD9E8D57u);
  const V64 low = hn::Set(d64, 0xFFFFFFFFu);
  for (int round = 0; round < 10; ++round) {
    const V64 p0 = hn::MulEven(hn::BitCast(d32, mul0), hn::BitCast(d32, c[0]));
    const V64 p1 = hn::MulEven(hn::BitCast(d32, mul1), hn::BitCast(d32, c[2]));
    const V64 k0 = hn::Set(d64, key0), k1 = hn::Set(d64, key1);
    c[0] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p1), c[1]), k0);
    c[1] = hn::And(p1, low);
    c[2] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p0), c[3]), k1);
    c[3] = hn::And(p0, low);
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
#endif
}

// z[c][r] = 1 / (1 - p) where dropout keeps element (row r, key j0 + c) and 0 where it drops it
// (core/dropout.h); padded rows get 0. One vector Philox call decides 4 keys for a vector of rows.
template <typename T>
void DropoutTile(const Problem& p, const internal::Sequence& seq, const std::vector<RowRef>& rows,
                 std::int64_t j0, std::int64_t keys, T* z, std::int64_t rp) {
  const hn::ScalableTag<std::uint64_t> d64;
  using V64 = hn::Vec<decltype(d64)>;
  const auto n = static_cast<std::int64_t>(hn::Lanes(d64));
  const internal::Dropout dropout(p.dropout_p, p.seed);
  const T kept = static_cast<T>(dropout.scale());
  const std::uint64_t threshold = dropout.threshold();
  std::fill(z, z + keys * rp, T(0));
  HWY_ALIGN std::uint64_t pos[HWY_MAX_BYTES / 8];
  HWY_ALIGN std::uint64_t head[HWY_MAX_BYTES / 8];
  HWY_ALIGN std::uint64_t words[4][HWY_MAX_BYTES / 8];
  const auto count = static_cast<std::int64_t>(rows.size());
  for (std::int64_t r0 = 0; r0 < count; r0 += n) {
    const std::int64_t lanes = std::min(n, count - r0);
    for (std::int64_t x = 0; x < n; ++x) {
      const RowRef& row = rows[static_cast<std::size_t>(r0 + std::min(x, lanes - 1))];
      pos[x] = static_cast<std::uint32_t>(row.local);
      head[x] = static_cast<std::uint32_t>(row.head);
    }
    for (std::int64_t c = 0; c < keys; ++c) {
      const std::int64_t j = j0 - seq.k_begin + c;
      if (c == 0 || (j & 3) == 0) {
        V64 counter[4] = {hn::Set(d64, static_cast<std::uint32_t>(j >> 2)), hn::Load(d64, pos),
                          hn::Load(d64, head), hn::Set(d64, static_cast<std::uint32_t>(seq.index))};
        PhiloxRows(d64, counter, dropout.key0(), dropout.key1());
        for (int w = 0; w < 4; ++w) hn::Store(counter[w], d64, words[w]);
      }
      const std::uint64_t* word = words[j & 3];
      T* zc = z + c * rp + r0;
      for (std::int64_t x = 0; x < lanes; ++x) zc[x] = word[x] >= threshold ? kept : T(0);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_DROPOUT_INL_H_
