// The two register-tiled micro-kernels of the forward pass: kRows × 2 vectors of accumulators.
//
// With kRows = 6 that is 12 accumulators + 2 loaded vectors + 1 broadcast = 15 registers, which
// fits AVX2's 16 and runs at ~100% of the FMA peak when its operands sit in L1 (ENGINE-NOTES.md:
// 12×8 and 3×32 shapes were load- or latency-bound at 40-80%). The 12 independent chains cover
// the 4-cycle FMA latency. Accumulators are named variables, not an array: GCC 12 kept an
// `acc[6][2]` array on the stack (29-35 instead of 97 GFLOP/s).
//
// One kernel serves every product of both passes: C[kRows][2N] (+)= A[kRows][depth]·B[depth][2N]
// with A read as broadcast scalars (any layout) and B as two vectors per step:
//   scores Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ   (A = K or V rows, B = a packed Qᵀ or dOᵀ panel; C = 0 first)
//   O = α·O + P·V                      (A = Pᵀ read by column; α fused into the accumulator load)
//   dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K (backward).

#if defined(SDPA_CPU_MICRO_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_MICRO_KERNELS_INL_H_
#undef SDPA_CPU_MICRO_KERNELS_INL_H_
#else
#define SDPA_CPU_MICRO_KERNELS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr int kMicroRows = 6;

// Applies STEP(row) for rows 0..kRows-1, each guarded at compile time.
#define SDPA_FOR_ROWS(STEP)  \
  STEP(0)                    \
  if constexpr (kRows > 1) { \
    STEP(1)                  \
  }                          \
  if constexpr (kRows > 2) { \
    STEP(2)                  \
  }                          \
  if constexpr (kRows > 3) { \
    STEP(3)                  \
  }                          \
  if constexpr (kRows > 4) { \
    STEP(4)                  \
  }                          \
  if constexpr (kRows > 5) { \
    STEP(5)                  \
  }

// C[r][0..2N) = α[r]·C[r][0..2N) + Σ_k A(r, k)·B[k][0..2N) for the kRows rows r, where
// A(r, k) = a[r·a_row + k·a_k] (any layout), B[k] = b + k·ldb (rows of 2N, unaligned), C rows
// are ldc apart (aligned), and α = 1 when alpha is null. Without kAccumulate, C starts at 0
// (C = A·B) and alpha is ignored.
template <int kRows, bool kAccumulate, class D, typename T = hn::TFromD<D>>
HWY_INLINE void MulAddMicroTile(D d, const T* HWY_RESTRICT a, std::int64_t a_row, std::int64_t a_k,
                                std::int64_t depth, const T* HWY_RESTRICT b, std::int64_t ldb,
                                const hn::TFromD<D>* HWY_RESTRICT alpha, T* HWY_RESTRICT c,
                                std::int64_t ldc) {
  static_assert(kRows >= 1 && kRows <= kMicroRows, "micro-tile rows");
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  using V = hn::Vec<D>;
  V c00 = hn::Zero(d), c01 = hn::Zero(d), c10 = hn::Zero(d), c11 = hn::Zero(d);
  V c20 = hn::Zero(d), c21 = hn::Zero(d), c30 = hn::Zero(d), c31 = hn::Zero(d);
  V c40 = hn::Zero(d), c41 = hn::Zero(d), c50 = hn::Zero(d), c51 = hn::Zero(d);
  const T* a0 = a;
  const T* a1 = a0 + a_row;
  const T* a2 = a1 + a_row;
  const T* a3 = a2 + a_row;
  const T* a4 = a3 + a_row;
  const T* a5 = a4 + a_row;
  if constexpr (kAccumulate) {
#define SDPA_LOAD_ROW(r)                                             \
  {                                                                  \
    const V scale = alpha ? hn::Set(d, alpha[r]) : hn::Set(d, T(1)); \
    c##r##0 = hn::Mul(hn::Load(d, c + (r)*ldc), scale);              \
    c##r##1 = hn::Mul(hn::Load(d, c + (r)*ldc + n), scale);          \
  }
    SDPA_FOR_ROWS(SDPA_LOAD_ROW)
#undef SDPA_LOAD_ROW
  }
  for (std::int64_t k = 0; k < depth; ++k) {
    const V b0 = hn::LoadU(d, b + k * ldb);
    const V b1 = hn::LoadU(d, b + k * ldb + n);
    const std::int64_t at = k * a_k;
#define SDPA_MULADD_ROW(r)                \
  {                                       \
    const V x = hn::Set(d, a##r[at]);     \
    c##r##0 = hn::MulAdd(x, b0, c##r##0); \
    c##r##1 = hn::MulAdd(x, b1, c##r##1); \
  }
    SDPA_FOR_ROWS(SDPA_MULADD_ROW)
#undef SDPA_MULADD_ROW
  }
#define SDPA_STORE_ROW(r)             \
  hn::Store(c##r##0, d, c + (r)*ldc); \
  hn::Store(c##r##1, d, c + (r)*ldc + n);
  SDPA_FOR_ROWS(SDPA_STORE_ROW)
#undef SDPA_STORE_ROW
}

// O[0..kVecs·N) = α · O + Σ_c P[c] · V[c][col..col + kVecs·N) for a single query row: the P·V
// product of decode, where one row has no 6-row micro-tile to fill. kVecs independent
// accumulators (up to 8) keep the FMA units busy despite the 4-cycle latency.
//   p: P of the row for each key, at p[c·ldp]; v: the tile's V rows (pack-inl.h PackedRows or
//   StoredRows: read in any storage type, an int8 row's scale folded into its P); o aligned.
template <int kVecs, class D, class Rows, typename T = hn::TFromD<D>>
HWY_INLINE void PvRowKernel(D d, const T* HWY_RESTRICT p, std::int64_t ldp, std::int64_t keys,
                            const Rows& v, std::int64_t col, T alpha, T* HWY_RESTRICT o) {
  static_assert(kVecs >= 1 && kVecs <= 8, "vectors per row kernel");
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  using V = hn::Vec<D>;
  const V a = hn::Set(d, alpha);
  V c0 = hn::Mul(hn::Load(d, o), a), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
#define SDPA_FOR_VECS(STEP)  \
  if constexpr (kVecs > 1) { \
    STEP(1)                  \
  }                          \
  if constexpr (kVecs > 2) { \
    STEP(2)                  \
  }                          \
  if constexpr (kVecs > 3) { \
    STEP(3)                  \
  }                          \
  if constexpr (kVecs > 4) { \
    STEP(4)                  \
  }                          \
  if constexpr (kVecs > 5) { \
    STEP(5)                  \
  }                          \
  if constexpr (kVecs > 6) { \
    STEP(6)                  \
  }                          \
  if constexpr (kVecs > 7) { \
    STEP(7)                  \
  }
#define SDPA_LOAD_VEC(x) c##x = hn::Mul(hn::Load(d, o + (x)*n), a);
  SDPA_FOR_VECS(SDPA_LOAD_VEC)
#undef SDPA_LOAD_VEC
  for (std::int64_t c = 0; c < keys; ++c) {
    T weight = p[c * ldp];
    if constexpr (Rows::kScaled) weight *= static_cast<T>(v.Scale(c));
    const V w = hn::Set(d, weight);
    const auto* row = v.Row(c) + col;
    c0 = hn::MulAdd(w, Rows::Load(d, row), c0);
#define SDPA_FMA_VEC(x) c##x = hn::MulAdd(w, Rows::Load(d, row + (x)*n), c##x);
    SDPA_FOR_VECS(SDPA_FMA_VEC)
#undef SDPA_FMA_VEC
  }
  hn::Store(c0, d, o);
#define SDPA_STORE_VEC(x) hn::Store(c##x, d, o + (x)*n);
  SDPA_FOR_VECS(SDPA_STORE_VEC)
#undef SDPA_STORE_VEC
#undef SDPA_FOR_VECS
}

// Calls kernel(std::integral_constant<int, C>()) with C = clamp(count, 1, kMax), so that a
// micro-kernel's row or vector count is a compile-time constant.
template <int kMax, class Kernel, int... kMinusOne>
HWY_INLINE void WithCount(std::int64_t count, const Kernel& kernel,
                          std::integer_sequence<int, kMinusOne...>) {
  const auto c = static_cast<int>(std::clamp<std::int64_t>(count, 1, kMax));
  static_cast<void>((
      (c == kMinusOne + 1 ? (kernel(std::integral_constant<int, kMinusOne + 1>()), true) : false) ||
      ...));
}
template <int kMax, class Kernel>
HWY_INLINE void WithCount(std::int64_t count, const Kernel& kernel) {
  WithCount<kMax>(count, kernel, std::make_integer_sequence<int, kMax>());
}
// Rows of a MulAddMicroTile call; vectors of a PvRowKernel call.
template <class Kernel>
HWY_INLINE void WithMicroRows(std::int64_t rows, const Kernel& kernel) {
  WithCount<kMicroRows>(rows, kernel);
}
template <class Kernel>
HWY_INLINE void WithRowVectors(std::int64_t vectors, const Kernel& kernel) {
  WithCount<8>(vectors, kernel);
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_MICRO_KERNELS_INL_H_
