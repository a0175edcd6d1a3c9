// Native bfloat16 products for CPUs with AVX512-BF16 (AMD Zen 4, Intel Cooper Lake, Sapphire
// Rapids): vdpbf16ps multiplies 32 bfloat16 pairs and accumulates into 16 float32 lanes, twice
// the float32 FMA's multiply-adds per instruction. Debian's Highway 1.0.3 has no native bf16 dot
// (its ReorderWidenMulAccumulate is emulated with shifts and two float32 FMAs), so these are
// intrinsics in functions compiled for that ISA (bf16_kernels.cc), called only when Available().
//
// "Pairs": two bfloat16 that are consecutive along the reduction dimension, stored as one
// 32-bit word (the first in the low half), which is what vdpbf16ps multiplies lane by lane.
//   Query panels  qp [rp / 32][depth_pairs][32]   pair k of query row r: (q[r][2k], q[r][2k+1])
//   K rows        read in place: key c's pair k is the word at k[c·ldk + 2k] (D even)
//   P pairs       pp [keys / 2][rp]               (P[2c][r], P[2c+1][r]), rounded to nearest even
//   V pairs       vp [keys / 2][dvp]              (V[2c][x], V[2c+1][x])
// Sᵀ and O are float32, laid out as in cpu/forward-inl.h (Sᵀ [keys][rp], O [rows][dvp]); rp and
// dvp are multiples of 32 (one micro-tile is 6 keys or rows × 32 lanes, 12 accumulators).
#pragma once

#include <cstdint>

#include "sdpa/half.h"

namespace sdpa::cpu::bf16 {

// True when the CPU has AVX512-BF16 with AVX512F/BW/VL and the OS saves ZMM state (XCR0), and
// SDPA_BF16_DOT is not 0.
bool Available();

// Query rows into panels: row(r) points to query row r (bfloat16, element stride `stride`, depth
// elements); rows count..rp-1 and the last pair's second half when depth is odd are 0.
void PackQueryPairs(std::int64_t count, std::int64_t rp, std::int64_t depth, std::int64_t stride,
                    const bfloat16* const* rows, std::uint32_t* qp);

// Sᵀ[c][r] = Σ_d k[c][d] · q[r][d] for keys [from, to) and the 32 rows of panel `panel` (rows
// panel·32 .. +31), K rows `ldk` elements apart (depth = head_dim, even).
void ScorePanel(const std::uint32_t* qp, std::int64_t depth_pairs, std::int64_t panel,
                const bfloat16* k, std::int64_t ldk, std::int64_t from, std::int64_t to, float* st,
                std::int64_t rp);

// pp for keys [0, keys) (keys rounded up to even; the missing key is 0) from Sᵀ probabilities.
void PackProbabilityPairs(const float* st, std::int64_t rp, std::int64_t keys, std::uint32_t* pp);

// vp for keys [0, keys) (rounded up to even with a zero row) of V rows `ldv` apart, dv columns
// zero-padded to dvp.
void PackValuePairs(const bfloat16* v, std::int64_t ldv, std::int64_t keys, std::int64_t dv,
                    std::int64_t dvp, std::uint32_t* vp);

// O[r][0..dvp) = α[r]·O[r] + Σ_{key pairs [pair_from, pair_to)} P·V for rows [r0, r0 + rows)
// (rows ≤ 6), O rows `ldo` apart.
void AccumulateRows(const std::uint32_t* pp, std::int64_t rp, std::int64_t r0, std::int64_t rows,
                    std::int64_t pair_from, std::int64_t pair_to, const std::uint32_t* vp,
                    std::int64_t dvp, const float* alpha, float* o, std::int64_t ldo);

// The vdpbf16ps throughput of this machine in GFLOP/s (2 flops per bfloat16 product), like
// MeasureFmaPeakGflops for float32 FMAs; 0 when not Available().
double MeasurePeakGflops(int threads, double seconds);

}  // namespace sdpa::cpu::bf16
