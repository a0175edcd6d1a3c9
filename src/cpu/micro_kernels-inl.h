// The register-tiled micro-kernels of both passes: kRows × kVecs vectors of accumulators.
//
// The shape is a template parameter (MicroShape), chosen per CPU by the tuning table
// (cpu/tuning.h): 6 × 2 is 12 accumulators + 2 loaded vectors + 1 broadcast = 15 registers, which
// fits AVX2's 16 and runs at 97-98% of the FMA peak on Zen 4 when its operands sit in L1
// (docs/performance.md); AVX-512's 32 registers also hold 4 × 4 (16 accumulators, 4 loads and 4
// broadcasts per 16 FMAs instead of 6 per 12), which llvm-mca's two-FMA-port Intel model puts at
// 99% of that core's peak against 85% for 6 × 2. The accumulators are an array indexed only by
// compile-time constants (Unroll), so GCC keeps them in registers: a loop over an `acc[6][2]`
// array kept them on the stack (29-35 instead of 97 GFLOP/s, ENGINE-NOTES.md).
//
// One kernel serves every product of both passes: C[kRows][kVecs·N] (+)= A[kRows][depth]·B with A
// read as broadcast scalars (any layout) and B as kVecs vectors per step:
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

// A register tile of kRows rows × kVecs vectors (panels and column blocks are kVecs·N wide).
template <int kRowsT, int kVecsT>
struct MicroShape {
  static constexpr int kRows = kRowsT;
  static constexpr int kVecs = kVecsT;
};
using DefaultShape = MicroShape<6, 2>;

// f(integral_constant<std::int64_t, I>) for I = 0..kCount-1, as straight-line code.
template <class F, std::int64_t... kIndex>
HWY_INLINE void UnrollImpl(const F& f, std::integer_sequence<std::int64_t, kIndex...>) {
  (f(std::integral_constant<std::int64_t, kIndex>()), ...);
}
template <int kCount, class F>
HWY_INLINE void Unroll(const F& f) {
  UnrollImpl(f, std::make_integer_sequence<std::int64_t, kCount>());
}

// On the lambdas given to Unroll that touch a kernel's accumulator arrays: they must be inlined
// before GCC's early scalar replacement of aggregates, or the arrays stay in memory and every
// multiply-add also stores its accumulator to the stack. GCC 12 inlined them too late in some
// instantiations (the backward's 4 × 4 score tile ran 2.4× slower per FMA than its 8 × 2 one on
// Zen 5, a zmm store per FMA in its loop: docs/performance.md).
#if defined(__GNUC__)
#define SDPA_UNROLLED __attribute__((always_inline))
#else
#define SDPA_UNROLLED
#endif

// C[r][0..kVecs·N) = α[r]·C[r][0..kVecs·N) + Σ_k A(r, k)·B[k][0..kVecs·N) for the kRows rows r,
// where A(r, k) = a[r·a_row + k·a_k] (any layout), B[k] = b + k·ldb (unaligned), C rows are ldc
// apart (aligned), and C is not rescaled when alpha is null. Without kAccumulate, C starts at 0
// (C = A·B) and alpha is ignored.
template <int kRows, int kVecs, bool kAccumulate, class D, typename T = hn::TFromD<D>>
HWY_INLINE void MulAddMicroTile(D d, const T* HWY_RESTRICT a, std::int64_t a_row, std::int64_t a_k,
                                std::int64_t depth, const T* HWY_RESTRICT b, std::int64_t ldb,
                                const hn::TFromD<D>* HWY_RESTRICT alpha, T* HWY_RESTRICT c,
                                std::int64_t ldc) {
  static_assert(kRows >= 1 && kVecs >= 1 && kRows * kVecs <= 32, "micro-tile shape");
  const std::int64_t n = static_cast<std::int64_t>(hn::Lanes(d));
  using V = hn::Vec<D>;
  V acc[kRows][kVecs];
  Unroll<kRows>([&](auto r) SDPA_UNROLLED {
    Unroll<kVecs>([&](auto x) SDPA_UNROLLED {
      if constexpr (kAccumulate) {
        const V old = hn::Load(d, c + r * ldc + x * n);
        acc[r][x] = alpha != nullptr ? hn::Mul(old, hn::Set(d, alpha[r])) : old;
      } else {
        acc[r][x] = hn::Zero(d);
      }
    });
  });
  for (std::int64_t k = 0; k < depth; ++k) {
    V bk[kVecs];
    Unroll<kVecs>([&](auto x) SDPA_UNROLLED { bk[x] = hn::LoadU(d, b + k * ldb + x * n); });
    const T* ak = a + k * a_k;
    Unroll<kRows>([&](auto r) SDPA_UNROLLED {
      const V broadcast = hn::Set(d, ak[r * a_row]);
      Unroll<kVecs>([&](auto x)
                        SDPA_UNROLLED { acc[r][x] = hn::MulAdd(broadcast, bk[x], acc[r][x]); });
    });
  }
  Unroll<kRows>([&](auto r) SDPA_UNROLLED {
    Unroll<kVecs>([&](auto x) SDPA_UNROLLED { hn::Store(acc[r][x], d, c + r * ldc + x * n); });
  });
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
  V acc[kVecs];
  Unroll<kVecs>([&](auto x) SDPA_UNROLLED { acc[x] = hn::Mul(hn::Load(d, o + x * n), a); });
  for (std::int64_t c = 0; c < keys; ++c) {
    T weight = p[c * ldp];
    if constexpr (Rows::kScaled) weight *= static_cast<T>(v.Scale(c));
    const V w = hn::Set(d, weight);
    const auto* row = v.Row(c) + col;
    Unroll<kVecs>(
        [&](auto x) SDPA_UNROLLED { acc[x] = hn::MulAdd(w, Rows::Load(d, row + x * n), acc[x]); });
  }
  Unroll<kVecs>([&](auto x) SDPA_UNROLLED { hn::Store(acc[x], d, o + x * n); });
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
// Rows of a MulAddMicroTile call of a Shape (at most Shape::kRows); vectors of a PvRowKernel call.
template <class Shape, class Kernel>
HWY_INLINE void WithMicroRows(std::int64_t rows, const Kernel& kernel) {
  WithCount<Shape::kRows>(rows, kernel);
}
template <class Kernel>
HWY_INLINE void WithRowVectors(std::int64_t vectors, const Kernel& kernel) {
  WithCount<8>(vectors, kernel);
}

// Calls f(MicroShape<rows, vectors>()) when this target carries that shape for compute type T,
// else f(DefaultShape()). Must agree with ShapeCompiled (tuning.cc), which the schedule asks
// (tests/cpu/tuning_test.cc checks it on every target). Each extra shape compiles the tile loops
// once more, so only AVX-512 float, where 32 registers make room for them, carries any.
template <typename T, class F>
HWY_INLINE void WithShape(int rows, int vectors, const F& f) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  if constexpr (sizeof(T) == sizeof(float)) {
    if (rows == 4 && vectors == 4) return f(MicroShape<4, 4>());
    if (rows == 8 && vectors == 2) return f(MicroShape<8, 2>());
  }
#endif
  static_cast<void>(rows);
  static_cast<void>(vectors);
  f(DefaultShape());
}

// 16·rows + vectors of the shape WithShape<T> runs for a request (for tests).
template <typename T>
int DispatchedShape(int rows, int vectors) {
  int shape = 0;
  WithShape<T>(rows, vectors,
               [&](auto s) { shape = 16 * decltype(s)::kRows + decltype(s)::kVecs; });
  return shape;
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_MICRO_KERNELS_INL_H_
