// Vectorised 2^x for the softmax, x <= 0 (scores minus their running max, in base 2).
//
// float: degree-5 polynomial (Estrin form) on the fraction f = x - round(x) in [-0.5, 0.5],
// times 2^round(x) built in the exponent bits. Coefficients fitted for relative error with
// c0 = 1 (so 2^0 = 1 exactly); max relative error 2.4e-7 over [-125, 0] (2 ulp;
// tests/cpu/forward_test.cc Exp2Accuracy pins <= 4e-7). It
// costs ~0.7 cycles per element on AVX2 against 1.6 for glibc's vector expf (ENGINE-NOTES.md).
// Below -125 the result is 2^-125 (not 0): callers zero masked entries explicitly.
// double: Highway's Exp on x·ln2: relative error <= 1e-14 (measured, the rounding of x·ln2
// scaled by |x| dominates), far inside the 1e-12 output bound.
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

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
HWY_INLINE hn::Vec<D> Exp2(D d, hn::Vec<D> x) {
  using T = hn::TFromD<D>;
  if constexpr (sizeof(T) == 8) {
    // Highway's Exp clamps its argument, which turns NaN into a number: keep NaN.
    return hn::IfThenElse(hn::IsNaN(x), x,
                          hn::Exp(d, hn::Mul(x, hn::Set(d, 0.693147180559945309417))));
  } else {
    const hn::RebindToSigned<D> di;
    const auto lowest = hn::Set(d, -125.0f);
    x = hn::IfThenElse(hn::Lt(x, lowest), lowest, x);
    const auto n = hn::Round(x);
    const auto f = hn::Sub(x, n);
    const auto f2 = hn::Mul(f, f);
    const auto f4 = hn::Mul(f2, f2);
    const auto p01 = hn::MulAdd(hn::Set(d, 0.6931470036506653f), f, hn::Set(d, 1.0f));
    const auto p23 =
        hn::MulAdd(hn::Set(d, 0.05550730973482132f), f, hn::Set(d, 0.24022242426872253f));
    const auto p45 =
        hn::MulAdd(hn::Set(d, 0.0013265475863590837f), f, hn::Set(d, 0.009671512991189957f));
    const auto p = hn::MulAdd(f4, p45, hn::MulAdd(f2, p23, p01));
    const auto exponent = hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127)));
    return hn::Mul(p, hn::BitCast(d, exponent));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_EXP2_INL_H_
