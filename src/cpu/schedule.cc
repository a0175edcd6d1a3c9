#include "cpu/schedule.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "cpu/simd.h"

namespace sdpa::cpu {
namespace {

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Visible (row, key) pairs of a task, from the key ranges of its first and last rows (both ends
// grow with the row index, so the average of the two is exact for a band of constant slope).
double TaskCost(const internal::Problem& p, const Task& t) {
  const internal::Sequence seq = p.Seq(t.seq);
  const auto visible = [&](std::int64_t row) {
    const internal::KeyRange range = p.Visible(seq, row / (p.heads / p.kv_heads));
    const std::int64_t begin = std::max(seq.k_begin + range.begin, t.kv_begin);
    const std::int64_t end = std::min(seq.k_begin + range.end, t.kv_end);
    return static_cast<double>(std::max<std::int64_t>(0, end - begin));
  };
  return static_cast<double>(t.row_end - t.row_begin) * 0.5 *
         (visible(t.row_begin) + visible(t.row_end - 1));
}

// The most keys of any sequence.
std::int64_t LongestKeys(const internal::Problem& p) {
  std::int64_t longest = 0;
  for (std::int64_t s = 0; s < p.num_sequences(); ++s) longest = std::max(longest, p.Seq(s).k_len);
  return longest;
}

// Keys per chunk: all of a sequence's, unless fewer than `min_tasks` independent tasks exist;
// then enough whole-tile chunks of at least kMinChunk keys to make up the difference.
std::int64_t KeyChunk(const internal::Problem& p, std::int64_t tasks, std::int64_t min_tasks,
                      std::int64_t kv_tile) {
  const std::int64_t keys = LongestKeys(p);
  if (tasks >= min_tasks || keys < 2 * kMinChunk) return std::max<std::int64_t>(keys, 1);
  const std::int64_t wanted = std::min(CeilDiv(min_tasks, tasks), keys / kMinChunk);
  return CeilDiv(CeilDiv(keys, wanted), kv_tile) * kv_tile;
}

// One task per (sequence, kv head, block of rows_per_task group rows, key chunk), heaviest
// first; returns the work in (row, key) pairs. rows_per_task <= 0 means all rows of a sequence.
double AddTasks(const internal::Problem& p, std::int64_t rows_per_task, Schedule& s) {
  double work = 0;
  for (std::int64_t index = 0; index < p.num_sequences(); ++index) {
    const internal::Sequence seq = p.Seq(index);
    const std::int64_t rows = s.group * seq.q_len;
    const std::int64_t block = rows_per_task > 0 ? rows_per_task : std::max<std::int64_t>(rows, 1);
    // At least one block, even of no rows: a backward task over keys no query sees still writes
    // their zero gradients; a forward task without keys still writes its rows.
    const std::int64_t row_tiles = std::max<std::int64_t>(1, CeilDiv(rows, block));
    const std::int64_t chunks = std::max<std::int64_t>(1, CeilDiv(seq.k_len, s.kv_chunk));
    for (std::int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      for (std::int64_t tile = 0; tile < row_tiles; ++tile) {
        for (std::int64_t split = 0; split < chunks; ++split) {
          Task t;
          t.seq = index;
          t.batch = seq.batch;
          t.kv_head = kvh;
          t.row_begin = tile * block;
          t.row_end = std::min(rows, t.row_begin + block);
          t.kv_begin = seq.k_begin + split * s.kv_chunk;
          t.kv_end = std::min(seq.k_begin + seq.k_len, t.kv_begin + s.kv_chunk);
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

// Names the per-score steps the tile loop adds (score_steps-inl.h), if any.
void DescribeScoreSteps(const internal::Problem& p, std::ostringstream& why) {
  std::vector<const char*> steps;
  if (p.softcap > 0) steps.push_back("softcap");
  if (!p.alibi_slopes.empty()) steps.push_back("ALiBi");
  if (p.has_score_mod()) steps.push_back("score_mod");
  if (p.has_mask_mod()) {
    steps.push_back(p.custom->block != nullptr ? "mask_mod (block_mask skips tiles)" : "mask_mod");
  }
  if (!p.sinks.empty()) steps.push_back("sinks");
  if (p.dropout_p > 0) steps.push_back("Philox dropout");
  if (steps.empty()) return;
  why << "; fused per tile:";
  for (std::size_t i = 0; i < steps.size(); ++i) why << (i ? ", " : " ") << steps[i];
}

// Takes the tiles, the register tile and the softmax's choices from the tuning, and says so in
// `why`. The register tile is kept only if this target carries it (ShapeCompiled) and its column
// blocks (vectors × lanes) divide v_dim (and head_dim for the backward, whose dK and dQ use them
// too); otherwise padding would waste more than the shape gains, and 6x2 is used.
void ApplyTuning(const internal::Problem& p, const Tuning& t, const std::string& simd_target,
                 int float_lanes, bool backward, Schedule& s, std::ostringstream& why) {
  s.q_tile = t.q_tile;
  s.kv_tile = t.kv_tile;
  s.exp2 = t.exp2;
  s.lazy_rescale = t.lazy_rescale;
  const bool is_double = p.compute == DType::kFloat64;
  const std::int64_t lanes = std::max(1, is_double ? float_lanes / 2 : float_lanes);
  const std::int64_t width = t.micro_vectors * lanes;
  why << "tuning " << t.name << ": ";
  if (!ShapeCompiled(simd_target, is_double, t.micro_rows, t.micro_vectors)) {
    why << "micro " << t.micro_rows << "x" << t.micro_vectors << " not compiled for " << simd_target
        << (is_double ? " float64" : "") << ", so 6x2";
  } else if (p.v_dim % width != 0 || (backward && p.head_dim % width != 0)) {
    why << "micro " << t.micro_rows << "x" << t.micro_vectors << " would pad "
        << (p.v_dim % width != 0 ? "v_dim" : "head_dim") << " to a multiple of " << width
        << ", so 6x2";
  } else {
    s.micro_rows = t.micro_rows;
    s.micro_vectors = t.micro_vectors;
    why << "micro " << s.micro_rows << "x" << s.micro_vectors;
  }
  why << ", exp2 " << (s.exp2 == Exp2Form::kHorner ? "horner" : "estrin") << ", lazy rescale "
      << (s.lazy_rescale > 0 ? "2^" + std::to_string(s.lazy_rescale) : std::string("off")) << "; ";
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
  return MakeSchedule(p, threads, ActiveTuning(), ActiveSimdTarget(), ActiveFloatLanes());
}

Schedule MakeSchedule(const internal::Problem& p, int threads, const Tuning& tuning,
                      const std::string& simd_target, int float_lanes) {
  Schedule s;
  std::ostringstream why;
  ApplyTuning(p, tuning, simd_target, float_lanes, false, s, why);
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.heads == 0 || p.q_len == 0) return s;
  s.group = p.heads / p.kv_heads;
  std::int64_t row_tasks = 0;
  for (std::int64_t index = 0; index < p.num_sequences(); ++index) {
    row_tasks += p.kv_heads * CeilDiv(s.group * p.Seq(index).q_len, s.q_tile);
  }
  s.kv_chunk = KeyChunk(p, row_tasks, kMinTasks, s.kv_tile);
  s.kv_splits = CeilDiv(std::max<std::int64_t>(LongestKeys(p), 1), s.kv_chunk);

  why << row_tasks << " row task(s) of <= " << s.q_tile << " rows (" << s.group
      << " head(s) per K/V head)";
  if (s.split()) {
    why << "; fewer than " << kMinTasks << ", so keys are split into " << s.kv_splits
        << " chunks of " << s.kv_chunk << " merged by LSE";
  } else {
    why << "; keys streamed in tiles of " << s.kv_tile;
  }
  if (p.causal != Causal::kNone) why << "; tiles above the causal diagonal are skipped";
  if (p.has_window()) why << "; tiles outside the window's band are skipped";
  if (p.varlen()) why << "; " << p.num_sequences() << " packed sequences, no padding";
  DescribeScoreSteps(p, why);
  const double pairs = AddTasks(p, s.q_tile, s);
  // A forward task without rows (a packed sequence with no queries) has nothing to write.
  s.tasks.erase(std::remove_if(s.tasks.begin(), s.tasks.end(),
                               [](const Task& t) { return t.row_end == t.row_begin; }),
                s.tasks.end());
  FitThreads(pairs * static_cast<double>(p.head_dim + p.v_dim), s, why);
  why << "; " << s.tasks.size() << " task(s) heaviest first on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

Schedule MakeBackwardSchedule(const internal::Problem& p, int threads) {
  return MakeBackwardSchedule(p, threads, ActiveTuning(), ActiveSimdTarget(), ActiveFloatLanes());
}

Schedule MakeBackwardSchedule(const internal::Problem& p, int threads, const Tuning& tuning,
                              const std::string& simd_target, int float_lanes) {
  Schedule s;
  std::ostringstream why;
  ApplyTuning(p, tuning, simd_target, float_lanes, true, s, why);
  s.threads = std::max(1, threads);
  if (p.batch == 0 || p.kv_heads == 0) return s;
  // Set even without keys: StoreQueryGradients maps the group's rows to heads with it.
  s.group = p.heads / p.kv_heads;
  if (p.kv_len == 0) return s;
  s.kv_chunk = KeyChunk(p, p.num_sequences() * p.kv_heads, kMinBackwardTasks, s.kv_tile);
  s.kv_splits = CeilDiv(LongestKeys(p), s.kv_chunk);
  why << "backward: tasks of (batch, kv head, " << s.kv_chunk << " keys)";
  // A task owns all rows of its group (backward-inl.h); FLOPs are ~2.5x the forward's.
  const double pairs = AddTasks(p, 0, s);
  FitThreads(2.5 * pairs * static_cast<double>(p.head_dim + p.v_dim), s, why);
  why << "; " << s.tasks.size() << " task(s) on " << s.threads << " thread(s)";
  s.reason = why.str();
  return s;
}

}  // namespace sdpa::cpu
