// 16-bit floating-point storage types: bfloat16 (8 exponent bits, 7 mantissa bits; Google Brain)
// and float16 (IEEE 754 binary16: 5 exponent bits, 10 mantissa bits). They are storage only: the
// library computes with them in float32. Each is its 16 bits, layout-compatible with
// torch.bfloat16 / torch.float16, numpy.float16, ml_dtypes.bfloat16, hwy::bfloat16_t and
// hwy::float16_t, so a buffer of any of those can be viewed as one of these.
//
// Conversions from float round to nearest, ties to even (as hardware conversions do), keep NaN a
// NaN (quiet), and overflow to ±inf; float16 keeps subnormals. Conversions to float are exact.
#pragma once

#include <cstdint>
#include <cstring>

namespace sdpa {

struct bfloat16 {
  std::uint16_t bits = 0;
};
struct float16 {
  std::uint16_t bits = 0;
};

namespace half_detail {
inline std::uint32_t BitsOf(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float FloatOf(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
}  // namespace half_detail

inline float ToFloat(bfloat16 x) { return half_detail::FloatOf(std::uint32_t{x.bits} << 16); }

inline bfloat16 ToBFloat16(float x) {
  const std::uint32_t u = half_detail::BitsOf(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep the sign, make it quiet
    return bfloat16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  }
  // Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate.
  const std::uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return bfloat16{static_cast<std::uint16_t>(rounded >> 16)};
}

inline float ToFloat(float16 x) {
  const std::uint32_t sign = std::uint32_t{x.bits & 0x8000u} << 16;
  const std::uint32_t exponent = (x.bits >> 10) & 0x1Fu, mantissa = x.bits & 0x3FFu;
  if (exponent == 0x1F) return half_detail::FloatOf(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) {
    return half_detail::FloatOf(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa · 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline float16 ToFloat16(float x) {
  const std::uint32_t u = half_detail::BitsOf(x);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) {  // NaN
    return float16{static_cast<std::uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu))};
  }
  if (magnitude >= 0x477FF000u) {  // rounds to 65520 or more: overflow (inf stays inf)
    return float16{static_cast<std::uint16_t>(sign | 0x7C00u)};
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: a float16 subnormal or zero
    // The float's value in units of 2^-24 (the subnormal step), rounded to nearest even. Exact
    // arithmetic: a float below 2^-14 times 2^24 is below 1024 and keeps every bit.
    const float units = half_detail::FloatOf(magnitude) * 16777216.0f;
    auto whole = static_cast<std::uint32_t>(units);
    const float rest = units - static_cast<float>(whole);
    if (rest > 0.5f || (rest == 0.5f && (whole & 1u))) ++whole;
    return float16{static_cast<std::uint16_t>(sign | whole)};
  }
  // Normal: rebias the exponent (127 → 15) and round the 23-bit mantissa to 10 bits.
  const std::uint32_t rebased = magnitude - (112u << 23);
  const std::uint32_t rounded = rebased + 0xFFFu + ((rebased >> 13) & 1u);
  return float16{static_cast<std::uint16_t>(sign | (rounded >> 13))};
}

}  // namespace sdpa
