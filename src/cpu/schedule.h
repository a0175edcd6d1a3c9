// Schedule: how one forward call is cut into tasks, and why. No SIMD code here.
//
// Rows. The query rows of one sequence (a batch entry, or a packed varlen sequence) that share a
// kv head (a GQA group of G = heads / kv_heads heads) form one list of G·Lq rows, ordered
// i-major: row r is query position i = r / G (within the sequence) of head h = kv_head·G + r % G.
// A task owns a contiguous range of at most q_tile rows, so K/V tiles are loaded once for the
// whole group, and under causal or window masking the rows of a tile span few positions. Only
// the keys of the task's sequence are visited, so packed sequences cost no padding.
//
// Keys. A task streams its K/V range in kv_tile steps. When there are too few row tasks to keep
// the cores busy (decode: Lq of 1-16, few heads), the keys are cut into kv_splits chunks, each
// a task producing a partial (O, m, l) that a fixed-order merge combines (flash-decoding).
//
// Determinism: the tasks depend only on the problem's shape, never on the thread count, and
// every task computes its rows in a fixed order; so results are bitwise identical for any number
// of threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/problem.h"
#include "cpu/tuning.h"

namespace sdpa::cpu {

struct Task {
  std::int64_t seq = 0;                     // Problem::Seq(seq)
  std::int64_t batch = 0, kv_head = 0;      // batch entry of the sequence
  std::int64_t row_begin = 0, row_end = 0;  // rows of the sequence's group list (see above)
  std::int64_t kv_begin = 0, kv_end = 0;    // keys [kv_begin, kv_end), packed positions
  std::int64_t split = 0;                   // index of the key chunk (0 when not split)
  double cost = 0;                          // visible (row, key) pairs, for ordering
};

struct Schedule {
  std::int64_t q_tile = 0;   // Br: rows per task
  std::int64_t kv_tile = 0;  // Bc: keys per step
  // The register tile (micro_kernels-inl.h) and the softmax's choices, from the tuning
  // (tuning.h) as this problem and SIMD target allow.
  int micro_rows = 6, micro_vectors = 2;
  Exp2Form exp2 = Exp2Form::kHorner;
  int lazy_rescale = 8;
  std::int64_t group = 1;  // G = heads / kv_heads
  std::int64_t kv_splits = 1;
  std::int64_t kv_chunk = 0;  // keys per split
  std::vector<Task> tasks;    // heaviest first, so that all threads finish together
  int threads = 1;
  std::string reason;

  bool split() const { return kv_splits > 1; }
};

// Tile sizes and the register tile come from the tuning table (tuning.h): on Zen 4, ~96 query
// rows by 128 keys keep the per-thread working set (Qᵀ panel, Sᵀ tile, O accumulator, K/V tile)
// inside L2 for head_dim <= 128 while K/V are reused across 96 rows (ENGINE-NOTES.md).
// Below this many row tasks the keys are split (so 2-32 cores have work);
inline constexpr std::int64_t kMinTasks = 32;
// ...into chunks of at least this many keys (merge cost stays < 1%).
inline constexpr std::int64_t kMinChunk = 512;

// Each extra thread must get at least this much work (visible pairs × (D + Dv), ~2 flops each):
// waking a sleeping OpenMP thread costs 5-50 us, and on a 2-vCPU VM whose other core is busy it
// can cost a whole scheduler time slice (a 64×64 problem took 16 ms on 2 threads, 17 us on 1).
inline constexpr double kMinWorkPerThread = 2e6;

// With the active tuning and SIMD target, or with the given ones (tests).
Schedule MakeSchedule(const internal::Problem& problem, int threads);
Schedule MakeSchedule(const internal::Problem& problem, int threads, const Tuning& tuning,
                      const std::string& simd_target, int float_lanes);

// The backward's partition (backward-inl.h): one task per (batch, kv head, key chunk) owns the
// gradients of its keys and all query rows of its group (row_begin = 0, row_end = G·Lq). Keys are
// chunked only when there are fewer than kMinBackwardTasks (batch, kv head) pairs; each chunk then
// keeps its own dQ, summed in chunk order afterwards. Shape-only, so thread-count independent.
inline constexpr std::int64_t kMinBackwardTasks = 8;
Schedule MakeBackwardSchedule(const internal::Problem& problem, int threads);
Schedule MakeBackwardSchedule(const internal::Problem& problem, int threads, const Tuning& tuning,
                              const std::string& simd_target, int float_lanes);

}  // namespace sdpa::cpu
