// Vectorised 2^x for the softmax: x = (score - running max)·log2 e, so x <= 0, or x <= the lazy
// rescaling threshold (forward-inl.h) when the max is kept stale.
//
// float: 2^x = 2^n · p(f) with n = round(x), f = x - n in [-0.5, 0.5] and p a degree-5
// polynomial fitted for relative error with p(0) = 1 (so 2^0 = 1 exactly); max relative error
// 2.4e-7 over [-125, 8] (2 ulp; tests/cpu/forward_test.cc Exp2Accuracy pins <= 4e-7). Per vector:
//   AVX-512: f = vreduceps(x), n = x - f, p(f), vscalefps(p, n): 8 instructions with Horner's
//            form (scalef inserts the exponent and gives exactly 0 for n = -inf);
//   others:  n from the 1.5·2^23 rounding trick (the integer lands in the low mantissa bits, so
//            no float-to-int conversion and its overflow fix-up), exponent bits n + 127 shifted
//            into place: 13 instructions with Horner's form.
// The old form (Round, ConvertTo with Highway's overflow fix-up, Estrin) took 22 on AVX-512.
// Horner (5 dependent FMAs) needs the fewest instructions; Estrin (7, in 3 levels) the fewest
// cycles of latency. The softmax loop has 16-128 independent vectors in flight, so throughput
// decides and Horner is the default; the tuning table (cpu/tuning.h) can pick either.
// x <= -127 and x = -inf give exactly 0 (masked scores need no separate zeroing); 2^x for
// x in (-127, -125) may be a denormal, which the kernels flush to zero.
// double: Highway's Exp on x·ln2: relative error <= 1e-14 (measured, the rounding of x·ln2
// scaled by |x| dominates), far inside the 1e-12 output bound; -inf gives 0 here too.
// NaN in, NaN out on every target (no Max/Min clamp, which drops NaN on some targets).

// Per-target include guard (Highway convention).
#if defined(SDPA_CPU_EXP2_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_EXP2_INL_H_
#undef SDPA_CPU_EXP2_INL_H_
#else
#define SDPA_CPU_EXP2_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <limits>
#include <type_traits>

#include "cpu/tuning.h"  // Exp2Form

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// p(f) ≈ 2^f on [-0.5, 0.5], p(0) = 1.
template <Exp2Form kForm, class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2Polynomial(D d, V f) {
  const V c1 = hn::Set(d, 0.6931470036506653f), c2 = hn::Set(d, 0.24022242426872253f);
  const V c3 = hn::Set(d, 0.05550730973482132f), c4 = hn::Set(d, 0.009671512991189957f);
  const V c5 = hn::Set(d, 0.0013265475863590837f), one = hn::Set(d, 1.0f);
  if constexpr (kForm == Exp2Form::kHorner) {
    V p = hn::MulAdd(c5, f, c4);
    p = hn::MulAdd(p, f, c3);
    p = hn::MulAdd(p, f, c2);
    p = hn::MulAdd(p, f, c1);
    return hn::MulAdd(p, f, one);
  } else {
    const V f2 = hn::Mul(f, f);
    const V f4 = hn::Mul(f2, f2);
    const V p01 = hn::MulAdd(c1, f, one);
    const V p23 = hn::MulAdd(c3, f, c2);
    const V p45 = hn::MulAdd(c5, f, c4);
    return hn::MulAdd(f4, p45, hn::MulAdd(f2, p23, p01));
  }
}

template <Exp2Form kForm = Exp2Form::kHorner, class D>
HWY_INLINE hn::Vec<D> Exp2(D d, hn::Vec<D> x) {
  using T = hn::TFromD<D>;
  using V = hn::Vec<D>;
  if constexpr (sizeof(T) == 8) {
    // Highway's Exp clamps its argument, which turns NaN into a number: keep NaN.
    const V y = hn::Exp(d, hn::Mul(x, hn::Set(d, 0.693147180559945309417)));
    return hn::IfThenElse(
        hn::IsNaN(x), x,
        hn::IfThenZeroElse(hn::Eq(x, hn::Set(d, -std::numeric_limits<T>::infinity())), y));
  } else {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if constexpr (std::is_same_v<V, hn::Vec512<float>>) {
      // reduce(x) = x - round(x) (imm 8: keep 0 fraction bits, round to nearest, no precision
      // exception); reduce(-inf) = 0, so n = -inf and scalef(1, -inf) = 0.
      const V f{_mm512_reduce_ps(x.raw, 8)};
      const V n = hn::Sub(x, f);
      return V{_mm512_scalef_ps(Exp2Polynomial<kForm>(d, f).raw, n.raw)};
    }
#endif
    const hn::RebindToSigned<D> di;
    // Below -127 the exponent bits would wrap; -127 itself gives the bits of +0.0.
    const V lowest = hn::Set(d, -127.0f);
    x = hn::IfThenElse(hn::Lt(x, lowest), lowest, x);
    // x + 1.5·2^23 rounds x to an integer held in the low mantissa bits of the sum.
    const V magic = hn::Set(d, 12582912.0f);
    const V shifted = hn::Add(x, magic);
    const V n = hn::Sub(shifted, magic);
    const V p = Exp2Polynomial<kForm>(d, hn::Sub(x, n));
    // The sum's bits are 0x4B400000 + n; shifting by 23 keeps only n + 127 (in 0..135).
    const auto exponent = hn::ShiftLeft<23>(hn::Add(hn::BitCast(di, shifted), hn::Set(di, 127)));
    return hn::Mul(p, hn::BitCast(d, exponent));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_EXP2_INL_H_
