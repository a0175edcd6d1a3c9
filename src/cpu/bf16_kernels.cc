#include "cpu/bf16_kernels.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/parallel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define SDPA_HAVE_BF16_KERNELS 1
#endif

namespace sdpa::cpu::bf16 {

#ifdef SDPA_HAVE_BF16_KERNELS
namespace {

// Functions that execute AVX-512 BF16 instructions carry this target; nothing else in this file
// does, and they are called only after Available() said yes.
#define SDPA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

std::uint64_t Xcr0() {
  std::uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (std::uint64_t{edx} << 32) | eax;
}

bool CpuHasBf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  if ((Xcr0() & 0xE6) != 0xE6) return false;  // XMM, YMM, opmask and both ZMM states saved
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), bw = b & (1u << 30), vl = b & (1u << 31);
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  const bool bf16 = a & (1u << 5);
  return f && bw && vl && bf16;
}

// Applies STEP(i) for i = 0..kCount-1, each guarded at compile time (named accumulators: GCC 12
// keeps an array of vectors on the stack; ENGINE-NOTES.md).
#define SDPA_FOR_6(kCount, STEP) \
  STEP(0)                        \
  if constexpr (kCount > 1) {    \
    STEP(1)                      \
  }                              \
  if constexpr (kCount > 2) {    \
    STEP(2)                      \
  }                              \
  if constexpr (kCount > 3) {    \
    STEP(3)                      \
  }                              \
  if constexpr (kCount > 4) {    \
    STEP(4)                      \
  }                              \
  if constexpr (kCount > 5) {    \
    STEP(5)                      \
  }

SDPA_BF16_TARGET inline __m512bh Bcast(std::uint32_t pair) {
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
}
SDPA_BF16_TARGET inline __m512bh LoadPairs(const std::uint32_t* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}
inline std::uint32_t PairAt(const bfloat16* row, std::int64_t k) {
  std::uint32_t pair;
  std::memcpy(&pair, row + 2 * k, sizeof(pair));
  return pair;
}

// Sᵀ rows c0 .. c0 + kKeys - 1, lanes panel·32 .. +31.
template <int kKeys>
SDPA_BF16_TARGET void ScoreMicro(const std::uint32_t* qp, std::int64_t depth_pairs,
                                 const bfloat16* k, std::int64_t ldk, float* st, std::int64_t rp) {
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m512 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  const bfloat16* k0 = k;
  const bfloat16* k1 = k0 + ldk;
  const bfloat16* k2 = k1 + ldk;
  const bfloat16* k3 = k2 + ldk;
  const bfloat16* k4 = k3 + ldk;
  const bfloat16* k5 = k4 + ldk;
  for (std::int64_t p = 0; p < depth_pairs; ++p) {
    const __m512bh b0 = LoadPairs(qp + p * 32), b1 = LoadPairs(qp + p * 32 + 16);
#define SDPA_STEP(i)                            \
  {                                             \
    const __m512bh x = Bcast(PairAt(k##i, p));  \
    a##i##0 = _mm512_dpbf16_ps(a##i##0, x, b0); \
    a##i##1 = _mm512_dpbf16_ps(a##i##1, x, b1); \
  }
    SDPA_FOR_6(kKeys, SDPA_STEP)
#undef SDPA_STEP
  }
#define SDPA_STORE(i)                     \
  _mm512_storeu_ps(st + (i)*rp, a##i##0); \
  _mm512_storeu_ps(st + (i)*rp + 16, a##i##1);
  SDPA_FOR_6(kKeys, SDPA_STORE)
#undef SDPA_STORE
}

// O rows r .. r + kRows - 1, columns col .. col + 31.
template <int kRows>
SDPA_BF16_TARGET void PvMicro(const std::uint32_t* pp, std::int64_t rp, std::int64_t pair_from,
                              std::int64_t pair_to, const std::uint32_t* vp, std::int64_t dvp,
                              const float* alpha, float* o, std::int64_t ldo) {
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m512 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
#define SDPA_LOAD(i)                                               \
  {                                                                \
    const __m512 s = _mm512_set1_ps(alpha ? alpha[i] : 1.0f);      \
    a##i##0 = _mm512_mul_ps(_mm512_loadu_ps(o + (i)*ldo), s);      \
    a##i##1 = _mm512_mul_ps(_mm512_loadu_ps(o + (i)*ldo + 16), s); \
  }
  SDPA_FOR_6(kRows, SDPA_LOAD)
#undef SDPA_LOAD
  for (std::int64_t c = pair_from; c < pair_to; ++c) {
    const __m512bh b0 = LoadPairs(vp + c * dvp), b1 = LoadPairs(vp + c * dvp + 16);
    const std::uint32_t* p = pp + c * rp;
#define SDPA_STEP(i)                            \
  {                                             \
    const __m512bh x = Bcast(p[i]);             \
    a##i##0 = _mm512_dpbf16_ps(a##i##0, x, b0); \
    a##i##1 = _mm512_dpbf16_ps(a##i##1, x, b1); \
  }
    SDPA_FOR_6(kRows, SDPA_STEP)
#undef SDPA_STEP
  }
#define SDPA_STORE(i)                     \
  _mm512_storeu_ps(o + (i)*ldo, a##i##0); \
  _mm512_storeu_ps(o + (i)*ldo + 16, a##i##1);
  SDPA_FOR_6(kRows, SDPA_STORE)
#undef SDPA_STORE
}

// 16-bit words: result word 2i = a[i], 2i + 1 = b[i] for i in [half·16, half·16 + 16).
SDPA_BF16_TARGET inline __m512i Interleave(__m512i a, __m512i b, int half) {
  alignas(64) std::uint16_t index[32];
  for (int i = 0; i < 16; ++i) {
    index[2 * i] = static_cast<std::uint16_t>(half * 16 + i);
    index[2 * i + 1] = static_cast<std::uint16_t>(32 + half * 16 + i);
  }
  return _mm512_permutex2var_epi16(a, _mm512_load_si512(index), b);
}

SDPA_BF16_TARGET void PackProbabilityPairsImpl(const float* st, std::int64_t rp, std::int64_t keys,
                                               std::uint32_t* pp) {
  // Lane r of the result: (bf16 P[2c][r], bf16 P[2c+1][r]). cvtne2ps2bf16 rounds to nearest
  // even and puts its second operand's 16 values first.
  alignas(64) std::uint16_t index[32];
  for (int i = 0; i < 16; ++i) {
    index[2 * i] = static_cast<std::uint16_t>(i);
    index[2 * i + 1] = static_cast<std::uint16_t>(16 + i);
  }
  const __m512i order = _mm512_load_si512(index);
  const __m512 zero = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < keys; c += 2) {
    for (std::int64_t x = 0; x < rp; x += 16) {
      const __m512 first = _mm512_loadu_ps(st + c * rp + x);
      const __m512 second = c + 1 < keys ? _mm512_loadu_ps(st + (c + 1) * rp + x) : zero;
      const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(second, first));
      _mm512_storeu_si512(pp + (c / 2) * rp + x, _mm512_permutexvar_epi16(order, both));
    }
  }
}

SDPA_BF16_TARGET void PackValuePairsImpl(const bfloat16* v, std::int64_t ldv, std::int64_t keys,
                                         std::int64_t dv, std::int64_t dvp, std::uint32_t* vp) {
  for (std::int64_t c = 0; c < keys; c += 2) {
    const bfloat16* first = v + c * ldv;
    const bfloat16* second = c + 1 < keys ? first + ldv : nullptr;
    std::uint32_t* out = vp + (c / 2) * dvp;
    std::int64_t x = 0;
    for (; x + 32 <= dv; x += 32) {
      const __m512i a = _mm512_loadu_si512(first + x);
      const __m512i b = second ? _mm512_loadu_si512(second + x) : _mm512_setzero_si512();
      _mm512_storeu_si512(out + x, Interleave(a, b, 0));
      _mm512_storeu_si512(out + x + 16, Interleave(a, b, 1));
    }
    for (; x < dvp; ++x) {
      const std::uint32_t lo = x < dv ? first[x].bits : 0u;
      const std::uint32_t hi = second && x < dv ? second[x].bits : 0u;
      out[x] = lo | (hi << 16);
    }
  }
}

SDPA_BF16_TARGET double PeakPass(double seconds) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
         a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  const __m512bh x = Bcast(0x3F803F80u), y = Bcast(0x3F803F80u);  // pairs of 1.0
  double best = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int kIterations = 100000;
    for (int i = 0; i < kIterations; ++i) {
      a0 = _mm512_dpbf16_ps(a0, x, y);
      a1 = _mm512_dpbf16_ps(a1, x, y);
      a2 = _mm512_dpbf16_ps(a2, x, y);
      a3 = _mm512_dpbf16_ps(a3, x, y);
      a4 = _mm512_dpbf16_ps(a4, x, y);
      a5 = _mm512_dpbf16_ps(a5, x, y);
      a6 = _mm512_dpbf16_ps(a6, x, y);
      a7 = _mm512_dpbf16_ps(a7, x, y);
      a8 = _mm512_dpbf16_ps(a8, x, y);
      a9 = _mm512_dpbf16_ps(a9, x, y);
      a10 = _mm512_dpbf16_ps(a10, x, y);
      a11 = _mm512_dpbf16_ps(a11, x, y);
      __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - t0;
    best = std::max(best, 12.0 * kIterations * 64 / elapsed.count() * 1e-9);
  }
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                   _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  const __m512 more = _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(sum, more));
  volatile float sink = lanes[0];  // keeps the chains alive
  (void)sink;
  return best;
}

}  // namespace

bool Available() {
  static const bool available = [] {
    const char* env = std::getenv("SDPA_BF16_DOT");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return CpuHasBf16();
  }();
  return available;
}

void PackQueryPairs(std::int64_t count, std::int64_t rp, std::int64_t depth, std::int64_t stride,
                    const bfloat16* const* rows, std::uint32_t* qp) {
  const std::int64_t pairs = (depth + 1) / 2;
  std::fill(qp, qp + rp * pairs, 0u);
  for (std::int64_t r = 0; r < count; ++r) {
    std::uint32_t* panel = qp + (r / 32) * pairs * 32 + r % 32;
    for (std::int64_t k = 0; k < pairs; ++k) {
      const std::uint32_t lo = rows[r][2 * k * stride].bits;
      const std::uint32_t hi = 2 * k + 1 < depth ? rows[r][(2 * k + 1) * stride].bits : 0u;
      panel[k * 32] = lo | (hi << 16);
    }
  }
}

void ScorePanel(const std::uint32_t* qp, std::int64_t depth_pairs, std::int64_t panel,
                const bfloat16* k, std::int64_t ldk, std::int64_t from, std::int64_t to, float* st,
                std::int64_t rp) {
  const std::uint32_t* panel_pairs = qp + panel * depth_pairs * 32;
  for (std::int64_t c = from; c < to; c += 6) {
    const bfloat16* keys = k + c * ldk;
    float* out = st + c * rp + panel * 32;
    switch (std::min<std::int64_t>(6, to - c)) {
      case 1:
        ScoreMicro<1>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
      case 2:
        ScoreMicro<2>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
      case 3:
        ScoreMicro<3>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
      case 4:
        ScoreMicro<4>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
      case 5:
        ScoreMicro<5>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
      default:
        ScoreMicro<6>(panel_pairs, depth_pairs, keys, ldk, out, rp);
        break;
    }
  }
}

void PackProbabilityPairs(const float* st, std::int64_t rp, std::int64_t keys, std::uint32_t* pp) {
  PackProbabilityPairsImpl(st, rp, keys, pp);
}

void PackValuePairs(const bfloat16* v, std::int64_t ldv, std::int64_t keys, std::int64_t dv,
                    std::int64_t dvp, std::uint32_t* vp) {
  PackValuePairsImpl(v, ldv, keys, dv, dvp, vp);
}

void AccumulateRows(const std::uint32_t* pp, std::int64_t rp, std::int64_t r0, std::int64_t rows,
                    std::int64_t pair_from, std::int64_t pair_to, const std::uint32_t* vp,
                    std::int64_t dvp, const float* alpha, float* o, std::int64_t ldo) {
  for (std::int64_t col = 0; col < dvp; col += 32) {
    const std::uint32_t* p = pp + r0;
    const float* a = alpha ? alpha + r0 : nullptr;
    float* out = o + r0 * ldo + col;
    switch (rows) {
      case 1:
        PvMicro<1>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
      case 2:
        PvMicro<2>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
      case 3:
        PvMicro<3>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
      case 4:
        PvMicro<4>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
      case 5:
        PvMicro<5>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
      default:
        PvMicro<6>(p, rp, pair_from, pair_to, vp + col, dvp, a, out, ldo);
        break;
    }
  }
}

double MeasurePeakGflops(int threads, double seconds) {
  if (!Available()) return 0;
  std::vector<double> best(static_cast<std::size_t>(std::max(threads, 1)), 0.0);
  ParallelFor(static_cast<std::int64_t>(best.size()), threads, [&](std::int64_t task, int) {
    best[static_cast<std::size_t>(task)] = PeakPass(seconds);
  });
  double total = 0;
  for (const double b : best) total += b;
  return total;
}

#else  // no x86-64 GCC/clang: never available

bool Available() { return false; }
void PackQueryPairs(std::int64_t, std::int64_t, std::int64_t, std::int64_t, const bfloat16* const*,
                    std::uint32_t*) {}
void ScorePanel(const std::uint32_t*, std::int64_t, std::int64_t, const bfloat16*, std::int64_t,
                std::int64_t, std::int64_t, float*, std::int64_t) {}
void PackProbabilityPairs(const float*, std::int64_t, std::int64_t, std::uint32_t*) {}
void PackValuePairs(const bfloat16*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                    std::uint32_t*) {}
void AccumulateRows(const std::uint32_t*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                    std::int64_t, const std::uint32_t*, std::int64_t, const float*, float*,
                    std::int64_t) {}
double MeasurePeakGflops(int, double) { return 0; }

#endif

}  // namespace sdpa::cpu::bf16
