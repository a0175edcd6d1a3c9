// The rows of a task and the keys they may see, for both passes: RowRef (one query row: where it
// reads, its key range), DescribeRows, and the per-tile questions asked of them (ClassifyTile:
// does a custom block_mask skip the tile; TileNeedsMask: must its scores be masked (with
// masks-inl.h's MaskBlock for bool masks); TileKeys:
// which keys of the tile a group of rows needs).

#if defined(SDPA_CPU_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SDPA_CPU_ROWS_INL_H_
#undef SDPA_CPU_ROWS_INL_H_
#else
#define SDPA_CPU_ROWS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/problem.h"

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using internal::MaskKind;
using internal::Problem;

// One query row of a task: where it reads, and which keys it may see.
struct RowRef {
  const void* q;            // q(b, h, i, 0), of the query's dtype
  const void* mask;         // mask(b, h, i, 0), nullptr without a mask
  std::int64_t head;        // query head h
  std::int64_t pos;         // packed query position (= local without varlen)
  std::int64_t local;       // query position within its sequence
  std::int64_t begin, end;  // keys [begin, end) (packed) pass the causal, window, sequence rules
  std::int64_t global_row;  // (b·H + h)·Lq + pos, the row's index in [B, H, Lq] arrays
};

// Rows [row_begin, row_end) of the query rows of `seq` sharing kv head `kv_head` (schedule.h):
// row r is position i = r / G (within the sequence) of head h = kv_head·G + r % G. Both key-range
// ends are non-decreasing along the rows.
inline void DescribeRows(const Problem& p, std::int64_t group, const internal::Sequence& seq,
                         std::int64_t kv_head, std::int64_t row_begin, std::int64_t row_end,
                         std::vector<RowRef>& rows) {
  rows.resize(static_cast<std::size_t>(row_end - row_begin));
  const auto mask_elem = static_cast<std::int64_t>(DTypeSize(p.mask.dtype));
  const auto q_elem = static_cast<std::int64_t>(DTypeSize(p.q.dtype));
  const std::int64_t b = seq.batch;
  for (std::int64_t row = row_begin; row < row_end; ++row) {
    const std::int64_t local = row / group, i = seq.q_begin + local;
    const std::int64_t h = kv_head * group + row % group;
    RowRef& ref = rows[static_cast<std::size_t>(row - row_begin)];
    ref.q = static_cast<const char*>(p.q.data) +
            (b * p.q.stride[0] + h * p.q.stride[1] + i * p.q.stride[2]) * q_elem;
    ref.mask =
        p.mask_kind == MaskKind::kNone
            ? nullptr
            : static_cast<const char*>(p.mask.data) +
                  (b * p.mask.stride[0] + h * p.mask.stride[1] + i * p.mask.stride[2]) * mask_elem;
    ref.head = h;
    ref.pos = i;
    ref.local = local;
    const internal::KeyRange range = p.Visible(seq, local);
    ref.begin = seq.k_begin + range.begin;
    ref.end = seq.k_begin + range.end;
    ref.global_row = (b * p.heads + h) * p.q_len + i;
  }
}

// What a custom block_mask says about keys [j0, j0 + keys) (packed) for the task's rows: kEmpty
// only if empty for every head among the rows, kFull only if full for all; kPartial without a
// block_mask or mask_mod.
inline BlockKind ClassifyTile(const Problem& p, const internal::Sequence& seq,
                              const std::vector<RowRef>& rows, std::int64_t group, std::int64_t j0,
                              std::int64_t keys) {
  if (!p.has_mask_mod()) return BlockKind::kFull;
  if (p.custom->block == nullptr || rows.empty()) return BlockKind::kPartial;
  const std::int64_t heads = std::min<std::int64_t>(group, static_cast<std::int64_t>(rows.size()));
  const std::int64_t q_begin = rows.front().local, q_end = rows.back().local + 1;
  const std::int64_t k_begin = j0 - seq.k_begin;
  bool all_empty = true, all_full = true;
  for (std::int64_t r = 0; r < heads; ++r) {
    const BlockKind kind = p.custom->block(p.custom->context, seq.index, rows[r].head, q_begin,
                                           q_end, k_begin, k_begin + keys);
    all_empty = all_empty && kind == BlockKind::kEmpty;
    all_full = all_full && kind == BlockKind::kFull;
  }
  return all_empty ? BlockKind::kEmpty : all_full ? BlockKind::kFull : BlockKind::kPartial;
}

// True when some score of the tile [j0, j0 + keys) needs masking for the task's rows: a mask
// not known to keep the whole tile (mask_block, from MaskBlock: kFull without a mask), a
// mask_mod the block hint did not settle, or a key outside some row's range (the first row has
// the smallest range end, the last row the largest begin).
inline bool TileNeedsMask(const std::vector<RowRef>& rows, BlockKind kind, BlockKind mask_block,
                          std::int64_t j0, std::int64_t keys) {
  return mask_block != BlockKind::kFull || kind == BlockKind::kPartial || j0 < rows.back().begin ||
         j0 + keys > rows.front().end;
}

// The keys [from, to) of a tile that a group of rows needs computed: none outside them is
// visible to any of those rows.
struct TileKeys {
  std::int64_t from = 0, to = 0;
};

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#endif  // SDPA_CPU_ROWS_INL_H_
