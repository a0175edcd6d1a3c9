#include "cpu/schedule.h"

#include <algorithm>
#include <sstream>

namespace sdpa::cpu {
namespace {

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Visible (row, key) pairs of a task, from the causal ends of its first and last rows (ends grow
// with the row index, so the average of the two is exact for a linear diagonal).
double TaskCost(const internal::Problem& p, const Task& t) {
  const std::int64_t first_end = p.Visible(p.Seq(0), t.row_begin / (p.heads / p.kv_heads)).end;
  const std::int64_t last_end = p.Visible(p.Seq(0), (t.row_end - 1) / (p.heads / p.kv_heads)).end;
  const auto visible = [&](std::int64_t end) {
    return static_cast<double>(std::max<std::int64_t>(0, std::min(end, t.kv_end) - t.kv_begin));
  };
  return static_cast<double>(t.row_end - t.row_begin) * 0.5 *
         (visible(first_end) + visible(last_end));
}

// Keys per chunk: all of them, unless fewer than `min_tasks` independent tasks exist; then
// enough whole-tile chunks of at least kMinChunk keys to make up the difference.
std::int64_t KeyChunk(const internal::Problem& p, std::int64_t tasks, std::int64_t min_tasks) {
  if (tasks >= min_tasks || p.kv_len < 2 * kMinChunk) return std::max<std::int64_t>(p.kv_len, 1);
  const std::int64_t wanted = std::min(CeilDiv(min_tasks, tasks), p.kv_len / kMinChunk);
  return CeilDiv(CeilDiv(p.kv_len, wanted), kKvTile) * kKvTile;
}

// One task per (batch, kv head, block of rows_per_task group rows, key chunk), heaviest first;
// returns the work in (row, key) pairs.
double AddTasks(const internal::Problem& p, std::int64_t rows_per_task, Schedule& s) {
  const std::int64_t rows = s.group * p.q_len;
  // At least one block, even of no rows: a backward task over keys no query sees still writes
  // their zero gradients.
  const std::int64_t row_tiles =
      std::max<std::int64_t>(1, CeilDiv(rows, std::max<std::int64_t>(rows_per_task, 1)));
  double work = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      for (std::int64_t tile = 0; tile < row_tiles; ++tile) {
        for (std::int64_t split = 0; split < s.kv_splits; ++split) {
          Task t;
          t.batch = b;
          t.kv_head = kvh;
          t.row_begin = tile * rows_per_task;
          t.row_end = std::min(rows, t.row_begin + rows_per_task);
          t.kv_begin = split * s.kv_chunk;
          t.kv_end = std::min(p.kv_len, t.kv_begin + s.kv_chunk);
          t.split = split;
          t.cost = t.row_end > t.row_begin ? TaskCost(p, t) : 0;
          work += t.cost;
          s.tasks.push_back(t);
        }
      }
    }
  }
  std::stable_sort(s.tasks.begin(), s.tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  return work;
}

// Lowers s.threads to what `flops` of work pays for; says so in `why`.
void FitThreads(double flops, Schedule& s, std::ostringstream& why) {
  const auto useful =
      static_cast<int>(std::min<double>(s.threads, std::max(1.0, flops / kMinWorkPerThread)));
  if (useful < s.threads) {
    why << "; " << useful << " of " << s.threads << " threads, as the work is small";
    s.threads = useful;
  }
}

}  // namespace

Schedule MakeSchedule(const internal::Problem& p, int threads) {
  Schedule s;
  s.q_tile = kQTile;
  s.kv_tile = kKvTile;
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.heads == 0 || p.q_len == 0) return s;
  s.group = p.heads / p.kv_heads;
  const std::int64_t row_tasks = p.batch * p.kv_heads * CeilDiv(s.group * p.q_len, s.q_tile);
  s.kv_chunk = KeyChunk(p, row_tasks, kMinTasks);
  s.kv_splits = CeilDiv(std::max<std::int64_t>(p.kv_len, 1), s.kv_chunk);

  std::ostringstream why;
  why << row_tasks << " row task(s) of <= " << s.q_tile << " rows (" << s.group
      << " head(s) per K/V head)";
  if (s.split()) {
    why << "; fewer than " << kMinTasks << ", so keys are split into " << s.kv_splits
        << " chunks of " << s.kv_chunk << " merged by LSE";
  } else {
    why << "; keys streamed in tiles of " << s.kv_tile;
  }
  if (p.causal != Causal::kNone) why << "; tiles above the causal diagonal are skipped";
  const double pairs = AddTasks(p, s.q_tile, s);
  FitThreads(pairs * static_cast<double>(p.head_dim + p.v_dim), s, why);
  why << "; " << s.tasks.size() << " task(s) heaviest first on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

Schedule MakeBackwardSchedule(const internal::Problem& p, int threads) {
  Schedule s;
  s.q_tile = kQTile;
  s.kv_tile = kKvTile;
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.kv_heads == 0) return s;
  // Set even without keys: StoreQueryGradients maps the group's rows to heads with it.
  s.group = p.heads / p.kv_heads;
  if (p.kv_len == 0) return s;
  s.kv_chunk = KeyChunk(p, p.batch * p.kv_heads, kMinBackwardTasks);
  s.kv_splits = CeilDiv(p.kv_len, s.kv_chunk);
  std::ostringstream why;
  why << "backward: tasks of (batch, kv head, " << s.kv_chunk << " keys)";
  // A task owns all rows of its group (backward-inl.h); FLOPs are ~2.5x the forward's.
  const double pairs = AddTasks(p, s.group * p.q_len, s);
  FitThreads(2.5 * pairs * static_cast<double>(p.head_dim + p.v_dim), s, why);
  why << "; " << s.tasks.size() << " task(s) on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

}  // namespace sdpa::cpu
