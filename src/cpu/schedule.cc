#include "cpu/schedule.h"

#include <algorithm>
#include <sstream>

namespace sdpa::cpu {
namespace {

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Visible (row, key) pairs of a task, from the causal ends of its first and last rows (ends grow
// with the row index, so the average of the two is exact for a linear diagonal).
double TaskCost(const internal::Problem& p, const Task& t) {
  const std::int64_t first_end = p.CausalEnd(t.row_begin / (p.heads / p.kv_heads));
  const std::int64_t last_end = p.CausalEnd((t.row_end - 1) / (p.heads / p.kv_heads));
  const auto visible = [&](std::int64_t end) {
    return static_cast<double>(std::max<std::int64_t>(0, std::min(end, t.kv_end) - t.kv_begin));
  };
  return static_cast<double>(t.row_end - t.row_begin) * 0.5 *
         (visible(first_end) + visible(last_end));
}

}  // namespace

Schedule MakeSchedule(const internal::Problem& p, int threads) {
  Schedule s;
  s.q_tile = kQTile;
  s.kv_tile = kKvTile;
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.heads == 0 || p.q_len == 0) return s;
  s.group = p.heads / p.kv_heads;
  const std::int64_t rows = s.group * p.q_len;
  const std::int64_t row_tiles = CeilDiv(rows, s.q_tile);
  const std::int64_t row_tasks = p.batch * p.kv_heads * row_tiles;

  std::ostringstream why;
  why << row_tasks << " row task(s) of <= " << s.q_tile << " rows (" << s.group
      << " head(s) per K/V head)";
  s.kv_chunk = std::max<std::int64_t>(p.kv_len, 1);
  if (row_tasks < kMinTasks && p.kv_len >= 2 * kMinChunk) {
    const std::int64_t wanted = std::min(CeilDiv(kMinTasks, row_tasks), p.kv_len / kMinChunk);
    s.kv_chunk = CeilDiv(CeilDiv(p.kv_len, wanted), s.kv_tile) * s.kv_tile;
    s.kv_splits = CeilDiv(p.kv_len, s.kv_chunk);
    why << "; fewer than " << kMinTasks << ", so keys are split into " << s.kv_splits
        << " chunks of " << s.kv_chunk << " merged by LSE";
  } else {
    why << "; keys streamed in tiles of " << s.kv_tile;
  }
  if (p.causal != Causal::kNone) why << "; tiles above the causal diagonal are skipped";

  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      for (std::int64_t tile = 0; tile < row_tiles; ++tile) {
        for (std::int64_t split = 0; split < s.kv_splits; ++split) {
          Task t;
          t.batch = b;
          t.kv_head = kvh;
          t.row_begin = tile * s.q_tile;
          t.row_end = std::min(rows, t.row_begin + s.q_tile);
          t.kv_begin = split * s.kv_chunk;
          t.kv_end = std::min(p.kv_len, t.kv_begin + s.kv_chunk);
          t.split = split;
          t.cost = TaskCost(p, t);
          s.tasks.push_back(t);
        }
      }
    }
  }
  std::stable_sort(s.tasks.begin(), s.tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  double work = 0;
  for (const Task& t : s.tasks) work += t.cost * static_cast<double>(p.head_dim + p.v_dim);
  const auto useful =
      static_cast<int>(std::min<double>(s.threads, std::max(1.0, work / kMinWorkPerThread)));
  if (useful < s.threads) {
    why << "; " << useful << " of " << s.threads << " threads, as the work is small";
    s.threads = useful;
  }
  why << "; " << s.tasks.size() << " task(s) heaviest first on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

Schedule MakeBackwardSchedule(const internal::Problem& p, int threads) {
  Schedule s;
  s.q_tile = kQTile;
  s.kv_tile = kKvTile;
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.kv_heads == 0 || p.kv_len == 0) return s;
  s.group = p.heads / p.kv_heads;
  const std::int64_t pairs = p.batch * p.kv_heads;
  s.kv_chunk = p.kv_len;
  if (pairs < kMinBackwardTasks && p.kv_len >= 2 * kMinChunk) {
    const std::int64_t wanted = std::min(CeilDiv(kMinBackwardTasks, pairs), p.kv_len / kMinChunk);
    s.kv_chunk = CeilDiv(CeilDiv(p.kv_len, wanted), s.kv_tile) * s.kv_tile;
  }
  s.kv_splits = CeilDiv(p.kv_len, s.kv_chunk);
  double work = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      for (std::int64_t split = 0; split < s.kv_splits; ++split) {
        Task t;
        t.batch = b;
        t.kv_head = kvh;
        t.row_begin = 0;
        t.row_end = s.group * p.q_len;
        t.kv_begin = split * s.kv_chunk;
        t.kv_end = std::min(p.kv_len, t.kv_begin + s.kv_chunk);
        t.split = split;
        // Rows that see the chunk's keys: all but those before the diagonal.
        t.cost = t.row_end > 0 ? TaskCost(p, t) : 0;
        work += t.cost;
        s.tasks.push_back(t);
      }
    }
  }
  std::stable_sort(s.tasks.begin(), s.tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  work *= 2.5 * static_cast<double>(p.head_dim + p.v_dim);
  s.threads =
      static_cast<int>(std::min<double>(s.threads, std::max(1.0, work / kMinWorkPerThread)));
  std::ostringstream why;
  why << "backward: " << s.tasks.size() << " task(s) of (batch, kv head, " << s.kv_chunk
      << " keys) on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

}  // namespace sdpa::cpu
