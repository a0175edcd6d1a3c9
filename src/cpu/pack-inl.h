// The seams where operands enter and leave the kernels' buffers, and the only places that
// convert between the storage type S and the compute type T (core/types.h): queries transposed
// into panels (PackPanels), K/V and query rows gathered into contiguous, zero-padded rows
// (PackRows, GatherKvRows), results narrowed back to storage (Narrow).

#if defined(SDPA_CPU_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_PACK_INL_H_
#undef SDPA_CPU_PACK_INL_H_
#else
#define SDPA_CPU_PACK_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/problem.h"
#include "core/types.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::Narrow;
using internal::Widen;

template <typename S>
inline constexpr bool kIs16Bit = std::is_same_v<S, bfloat16> || std::is_same_v<S, float16>;

// Highway's lane type for a 16-bit storage type (the same 16 bits).
template <typename S>
using HwyHalf = std::conditional_t<std::is_same_v<S, bfloat16>, hwy::bfloat16_t, hwy::float16_t>;

// Transposed panels of `count` rows: dst[panel][k][x] = row(panel·width + x)[k·stride] · factor
// for k < depth; rows count..rp-1 are 0. dst holds rp·depth elements. row(r) points to a row
// stored as `dtype`.
template <typename T, class RowPtr>
void PackPanels(std::int64_t count, std::int64_t rp, std::int64_t width, std::int64_t depth,
                std::int64_t stride, T factor, DType dtype, const RowPtr& row, T* dst) {
  std::fill(dst, dst + rp * depth, T(0));
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    for (std::int64_t r = 0; r < count; ++r) {
      const S* src = static_cast<const S*>(row(r));
      T* col = dst + (r / width) * depth * width + r % width;
      for (std::int64_t k = 0; k < depth; ++k) col[k * width] = Widen<T>(src[k * stride]) * factor;
    }
  });
}

// One row of `width` elements stored as `dtype` (element stride `stride`), widened into dst
// [padded] with zeros after `width`.
template <typename T>
void PackRow(const void* src, DType dtype, std::int64_t stride, std::int64_t width,
             std::int64_t padded, T* dst) {
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    const S* row = static_cast<const S*>(src);
    for (std::int64_t x = 0; x < width; ++x) dst[x] = Widen<T>(row[x * stride]);
  });
  std::fill(dst + width, dst + padded, T(0));
}

// Stores `width` compute-type values (each times `factor`) into a row of `dtype` (element stride
// `stride`), rounding to nearest even.
// Unit-stride rows of the compute type take whole vectors.
template <typename T>
void StoreRow(const T* src, T factor, std::int64_t width, void* dst, DType dtype,
              std::int64_t stride) {
  internal::WithStorage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::Type;
    S* row = static_cast<S*>(dst);
    std::int64_t x = 0;
    if constexpr (std::is_same_v<S, T>) {
      if (stride == 1) {
        const hn::ScalableTag<T> d;
        const auto n = static_cast<std::int64_t>(hn::Lanes(d));
        const auto f = hn::Set(d, factor);
        for (; x + n <= width; x += n) hn::StoreU(hn::Mul(hn::LoadU(d, src + x), f), d, row + x);
      }
    }
    for (; x < width; ++x) row[x * stride] = Narrow<S>(src[x] * factor);
  });
}

// N lanes of d's type from storage of type S at p (unaligned), widened in registers: the dot
// form's way of reading a 16-bit or int8 cache without packing it first.
template <typename S, class D>
HWY_INLINE hn::Vec<D> LoadWidened(D d, const S* p) {
  if constexpr (std::is_same_v<S, hn::TFromD<D>>) {
    return hn::LoadU(d, p);
  } else if constexpr (kIs16Bit<S>) {
    const hn::Rebind<HwyHalf<S>, D> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const HwyHalf<S>*>(p)));
  } else {
    static_assert(std::is_same_v<S, std::int8_t>, "storage type");
    const hn::Rebind<std::int32_t, D> di;
    const hn::Rebind<std::int8_t, D> d8;
    return hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, p)));
  }
}

// The rows of a K or V tile as the dot form (few query rows) reads them: Row(c) points to row c
// of the tile, Load(d, p) reads N lanes of it widened to the compute type, and when kScaled each
// row's values are multiplied by Scale(c) (an int8 cache's dequantization, which the kernels
// apply once per score or per probability instead of per element).
//   PackedRows: rows already in the compute type, `ld` apart (in place, or a packed tile).
//   StoredRows: rows straight from the K/V source in its storage type (16-bit, int8).
template <typename T>
struct PackedRows {
  using Elem = T;
  static constexpr bool kScaled = false;
  const T* data;
  std::int64_t ld;
  const T* Row(std::int64_t c) const { return data + c * ld; }
  float Scale(std::int64_t) const { return 1.0f; }
  template <class D>
  static hn::Vec<D> Load(D d, const T* p) {
    return hn::LoadU(d, p);
  }
};
template <typename S>
struct StoredRows {
  using Elem = S;
  static constexpr bool kScaled = std::is_same_v<S, std::int8_t>;
  const internal::KvSource& kv;
  bool values;
  std::int64_t b, h, j0;
  const S* Row(std::int64_t c) const {
    return values ? kv.ValueRow<S>(b, h, j0 + c) : kv.KeyRow<S>(b, h, j0 + c);
  }
  float Scale(std::int64_t c) const {
    return values ? kv.ValueScale(b, h, j0 + c) : kv.KeyScale(b, h, j0 + c);
  }
  template <class D>
  static hn::Vec<D> Load(D d, const S* p) {
    return LoadWidened(d, p);
  }
};

// x (float32 lanes: probabilities, >= 0) rounded to the precision of the 16-bit type S, ties to
// even (NaN stays NaN; the float32 exponent range is kept): P is rounded like this before P·V when
// V is 16-bit, as PyTorch and FlashAttention do (their P·V multiplies 16-bit operands). bfloat16:
// drop 16 mantissa bits. float16: drop 13 bits in its normal range; below 2^-14 round to its
// subnormal step 2^-24.
template <typename S, class D>
HWY_INLINE hn::Vec<D> RoundToStorage(D d, hn::Vec<D> x) {
  const hn::RebindToUnsigned<D> du;
  const auto bits = hn::BitCast(du, x);
  if constexpr (std::is_same_v<S, bfloat16>) {
    const auto odd = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
    const auto up = hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), odd));
    return hn::IfThenElse(hn::IsNaN(x), x, hn::BitCast(d, hn::And(up, hn::Set(du, 0xFFFF0000u))));
  } else {
    const auto odd = hn::And(hn::ShiftRight<13>(bits), hn::Set(du, 1u));
    const auto up = hn::Add(bits, hn::Add(hn::Set(du, 0xFFFu), odd));
    const auto normal = hn::BitCast(d, hn::And(up, hn::Set(du, 0xFFFFE000u)));
    const auto step = hn::Set(d, 5.9604644775390625e-8f);  // 2^-24
    const auto subnormal = hn::Mul(hn::Round(hn::Div(x, step)), step);
    const auto rounded =
        hn::IfThenElse(hn::Lt(x, hn::Set(d, 6.103515625e-5f)), subnormal, normal);  // 2^-14
    return hn::IfThenElse(hn::IsNaN(x), x, rounded);
  }
}

// Element (b, h, i, 0) of an operand stored as op.dtype, as a pointer to its bytes.
template <class Op>
auto* RowOf(const Op& op, std::int64_t b, std::int64_t h, std::int64_t i) {
  using Byte = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(op.data)>>,
                                  const char, char>;
  return static_cast<Byte*>(op.data) + (b * op.stride[0] + h * op.stride[1] + i * op.stride[2]) *
                                           static_cast<std::int64_t>(DTypeSize(op.dtype));
}

// Rows [0, count) of `width` elements, gathered with element stride `stride` from rows `ld`
// apart, into dst [count][padded] with zeros after `width`. Unit-stride 16-bit rows are widened
// a vector at a time (shifts for bfloat16, F16C for float16 on x86): the K/V tiles of a 16-bit
// cache pass here once per tile, and for decode this conversion is the whole cost of a tile
// besides reading it.
template <typename S, typename T>
void PackRows(const S* src, std::int64_t ld, std::int64_t stride, std::int64_t count,
              std::int64_t width, std::int64_t padded, T* dst) {
  if constexpr (kIs16Bit<S> && std::is_same_v<T, float>) {
    if (stride == 1) {
      const hn::ScalableTag<float> df;
      const hn::Rebind<HwyHalf<S>, decltype(df)> dh;
      const auto n = static_cast<std::int64_t>(hn::Lanes(df));
      for (std::int64_t c = 0; c < count; ++c) {
        const auto* from = reinterpret_cast<const HwyHalf<S>*>(src + c * ld);
        T* row = dst + c * padded;
        std::int64_t x = 0;
        for (; x + n <= width; x += n)
          hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, from + x)), df, row + x);
        for (; x < width; ++x) row[x] = Widen<T>(src[c * ld + x]);
        std::fill(row + width, row + padded, T(0));
      }
      return;
    }
  }
  for (std::int64_t c = 0; c < count; ++c) {
    T* row = dst + c * padded;
    for (std::int64_t x = 0; x < width; ++x) row[x] = Widen<T>(src[c * ld + x * stride]);
    std::fill(row + width, row + padded, T(0));
  }
}

// One int8 row of `width` elements (unit stride) times its dequantization scale, into dst
// [padded] with zeros after `width`: a vector of int8 at a time, widened to int32 and float.
template <typename T>
void PackQuantizedRow(const std::int8_t* src, float scale, std::int64_t width, std::int64_t padded,
                      T* dst) {
  static_assert(std::is_same_v<T, float>, "int8 caches compute in float32");
  const hn::ScalableTag<float> df;
  const hn::Rebind<std::int32_t, decltype(df)> di;
  const hn::Rebind<std::int8_t, decltype(df)> d8;
  const auto n = static_cast<std::int64_t>(hn::Lanes(df));
  const auto factor = hn::Set(df, scale);
  std::int64_t x = 0;
  for (; x + n <= width; x += n) {
    const auto wide = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, src + x)));
    hn::StoreU(hn::Mul(wide, factor), df, dst + x);
  }
  for (; x < width; ++x) dst[x] = static_cast<T>(src[x]) * scale;
  std::fill(dst + width, dst + padded, T(0));
}

// Keys [j0, j0 + count) of (b, kv head h), key rows (or value rows when `values`) of `width`
// elements from the K/V source, into dst [count][padded]: run by run (core/problem.h KvSource),
// so a tile that crosses runs (pages) is gathered whole; int8 rows are dequantized with their
// scales.
template <typename S, typename T>
void GatherKvRows(const internal::KvSource& kv, bool values, std::int64_t b, std::int64_t h,
                  std::int64_t j0, std::int64_t count, std::int64_t width, std::int64_t padded,
                  T* dst) {
  const std::int64_t ld = values ? kv.value_ld() : kv.key_ld();
  const std::int64_t step = values ? kv.value_step() : kv.key_step();
  for (std::int64_t j = j0; j < j0 + count;) {
    const std::int64_t end = std::min(j0 + count, kv.RunEnd(b, j));
    const S* src = values ? kv.ValueRow<S>(b, h, j) : kv.KeyRow<S>(b, h, j);
    T* rows = dst + (j - j0) * padded;
    if constexpr (std::is_same_v<S, std::int8_t>) {
      for (std::int64_t c = 0; c < end - j; ++c) {  // validated: int8 rows have unit stride
        const float scale = values ? kv.ValueScale(b, h, j + c) : kv.KeyScale(b, h, j + c);
        PackQuantizedRow(src + c * ld, scale, width, padded, rows + c * padded);
      }
    } else {
      PackRows(src, ld, step, end - j, width, padded, rows);
    }
    j = end;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_PACK_INL_H_
