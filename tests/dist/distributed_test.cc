// Ring and Ulysses attention (sdpa/distributed.h) under mpirun: every rank builds the same full
// random inputs from a seed, runs the distributed call on its shard, and compares its rows with
// the float64 reference backend (Backend::kReference on float64 copies) over the full sequence:
// out within 2e-6·max|V|, the gradients within 2e-5·max|reference gradient| (float32 over
// L ≤ 100 keys; the single-process float32 engine is checked against the same bound, so the bound
// is what plain float32 attention achieves). Also: the progress modes and repeated runs give
// bitwise identical results, bad arguments on one rank make every rank throw, the layout helpers
// are bijections.
//
// Run with `mpirun -np P distributed_test` for any P >= 1 (ctest runs P = 1, 2, 3, 4).
#include "sdpa/distributed.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/tensors.h"

namespace {

using sdpa::Causal;
using sdpa::DType;
using sdpa::Layout;
using sdpa::SequenceLayout;
using sdpa_test::Array;

int Rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int World() {
  int p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

struct Case {
  std::string name;
  std::int64_t batch, heads, kv_heads, head_dim, v_dim;
  std::int64_t chunk;  // zigzag: seq_len = 2·P·chunk; contiguous: seq_len = P·chunk + extra
  std::int64_t extra = 0;
  bool causal = false;
  SequenceLayout layout = SequenceLayout::kZigzag;
  bool empty_rank = false;  // contiguous: rank 1 holds no rows (its rows go to rank 0)
  std::optional<double> softcap = std::nullopt;
  bool sinks = false;
  std::optional<double> scale = std::nullopt;
  std::optional<sdpa::Window> window = std::nullopt;  // Ulysses only
  bool alibi = false;                                 // Ulysses only
};

std::vector<Case> RingCases() {
  std::vector<Case> cases = {
      {"zigzag causal GQA", 1, 4, 2, 16, 16, 6, 0, true, SequenceLayout::kZigzag},
      {"zigzag non-causal MQA Dv!=D", 2, 2, 1, 8, 12, 5, 0, false, SequenceLayout::kZigzag},
      {"contiguous causal uneven", 1, 4, 2, 16, 8, 9, 3, true, SequenceLayout::kContiguous},
      {"contiguous non-causal odd", 1, 2, 2, 8, 8, 7, 1, false, SequenceLayout::kContiguous},
      // blocks of 32 KiB: above Open MPI's 4 KiB eager limit, where blocking rings deadlock
      {"zigzag causal large blocks", 1, 2, 2, 32, 32, 32, 0, true, SequenceLayout::kZigzag},
      {"contiguous causal empty shard", 1, 2, 1, 8, 8, 6, 1, true, SequenceLayout::kContiguous,
       true},
  };
  Case variants{"zigzag causal softcap sinks scale", 1, 4, 2, 8, 8, 4, 0, true};
  variants.softcap = 3.0;
  variants.sinks = true;
  variants.scale = 0.7;
  cases.push_back(variants);
  return cases;
}

// Every rank's rows and the global positions of this rank's.
std::vector<std::int64_t> Lengths(const Case& c, int world) {
  const std::int64_t seq =
      c.layout == SequenceLayout::kZigzag ? 2 * world * c.chunk : world * c.chunk + c.extra;
  std::vector<std::int64_t> lengths;
  for (int r = 0; r < world; ++r) lengths.push_back(sdpa::ShardLength(c.layout, seq, r, world));
  if (c.empty_rank && world > 1) {
    lengths[0] += lengths[1];
    lengths[1] = 0;
  }
  return lengths;
}
// Written here from the definitions (not the library's ShardPositions).
std::vector<std::int64_t> PositionsOf(const Case& c, const std::vector<std::int64_t>& lengths,
                                      int rank) {
  const int world = static_cast<int>(lengths.size());
  std::vector<std::int64_t> pos;
  if (c.layout == SequenceLayout::kZigzag) {
    const std::int64_t half = lengths[0] / 2;
    for (std::int64_t i = 0; i < half; ++i) pos.push_back(rank * half + i);
    for (std::int64_t i = 0; i < half; ++i) pos.push_back((2 * world - 1 - rank) * half + i);
  } else {
    std::int64_t offset = 0;
    for (int r = 0; r < rank; ++r) offset += lengths[static_cast<std::size_t>(r)];
    for (std::int64_t i = 0; i < lengths[static_cast<std::size_t>(rank)]; ++i)
      pos.push_back(offset + i);
  }
  return pos;
}

// Rows `pos` of a [B, X, L, W] array (or [B, X, L] with w = 1 and rank 3).
Array RowsOf(const Array& full, const std::vector<std::int64_t>& pos) {
  std::vector<std::int64_t> shape = full.shape;
  const bool rank3 = shape.size() == 3;
  const std::int64_t W = rank3 ? 1 : shape[3], L = shape[2];
  shape[2] = static_cast<std::int64_t>(pos.size());
  Array out(shape);
  const std::int64_t n = shape[2];
  for (std::int64_t bx = 0; bx < shape[0] * shape[1]; ++bx)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t e = 0; e < W; ++e)
        out.values[static_cast<std::size_t>((bx * n + i) * W + e)] =
            full.values[static_cast<std::size_t>((bx * L + pos[static_cast<std::size_t>(i)]) * W +
                                                 e)];
  return out;
}

std::vector<float> ToFloat(const Array& a) {
  return std::vector<float>(a.values.begin(), a.values.end());
}
Array FromFloat(const std::vector<float>& v, std::vector<std::int64_t> shape) {
  return Array(std::move(shape), std::vector<double>(v.begin(), v.end()));
}
double MaxAbs(const Array& a) {
  double m = 0;
  for (double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}
// max |actual - expected| <= atol, with the worst element reported.
::testing::AssertionResult Within(const Array& actual, const Array& expected, double atol,
                                  const char* what) {
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t n = 0; n < actual.values.size(); ++n) {
    const double x = actual.values[n], e = expected.values[n];
    const double d = (std::isinf(x) && x == e) ? 0.0 : std::fabs(x - e);
    if (!(d <= worst)) {
      worst = d;
      at = n;
    }
  }
  if (worst <= atol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << " on rank " << Rank() << ": max error " << worst << " at flat " << at
         << " (got " << actual.values[at] << ", want " << expected.values[at] << ") > " << atol;
}

struct Full {
  Array q, k, v, dout;         // float32-representable values, [B, H|Hkv, L, D|Dv]
  Array out, lse, dq, dk, dv;  // float64 reference
  Array dsinks;                // [H] with sinks
  sdpa::Options options;
};

Full Reference(const Case& c, std::int64_t seq) {
  Full f;
  f.q = Array::Uniform({c.batch, c.heads, seq, c.head_dim}, 11).RoundedToFloat();
  f.k = Array::Uniform({c.batch, c.kv_heads, seq, c.head_dim}, 12).RoundedToFloat();
  f.v = Array::Uniform({c.batch, c.kv_heads, seq, c.v_dim}, 13).RoundedToFloat();
  f.dout = Array::Uniform({c.batch, c.heads, seq, c.v_dim}, 14).RoundedToFloat();
  f.options.causal = c.causal ? Causal::kTopLeft : Causal::kNone;
  f.options.softcap = c.softcap;
  f.options.scale = c.scale;
  f.options.window = c.window;
  if (c.alibi) {
    for (std::int64_t h = 0; h < c.heads; ++h)
      f.options.alibi_slopes.push_back(0.1 * static_cast<double>(h + 1));
  }
  if (c.sinks) {
    for (std::int64_t h = 0; h < c.heads; ++h)
      f.options.sinks.push_back(0.25 * static_cast<double>(h) - 0.5);
  }
  sdpa::Options ref = f.options;
  ref.backend = sdpa::Backend::kReference;
  auto view = [](const Array& a) {
    return sdpa::TensorView(a.values.data(), DType::kFloat64, Layout::Contiguous(a.shape));
  };
  f.out = Array({c.batch, c.heads, seq, c.v_dim});
  f.lse = Array({c.batch, c.heads, seq});
  sdpa::MutableTensorView lse(f.lse.values.data(), DType::kFloat64,
                              Layout::Contiguous(f.lse.shape));
  sdpa::Forward(view(f.q), view(f.k), view(f.v),
                sdpa::MutableTensorView(f.out.values.data(), DType::kFloat64,
                                        Layout::Contiguous(f.out.shape)),
                lse, ref);
  f.dq = Array(f.q.shape);
  f.dk = Array(f.k.shape);
  f.dv = Array(f.v.shape);
  auto mut = [](Array& a) {
    return sdpa::MutableTensorView(a.values.data(), DType::kFloat64, Layout::Contiguous(a.shape));
  };
  if (c.sinks) {
    f.dsinks = Array({c.heads});
    sdpa::Backward(view(f.q), view(f.k), view(f.v), view(f.out), view(f.lse), view(f.dout),
                   mut(f.dq), mut(f.dk), mut(f.dv), mut(f.dsinks), ref);
  } else {
    sdpa::Backward(view(f.q), view(f.k), view(f.v), view(f.out), view(f.lse), view(f.dout),
                   mut(f.dq), mut(f.dk), mut(f.dv), ref);
  }
  return f;
}

// One rank's shard of the inputs as float32, and its results.
struct ShardRun {
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv, dsinks;
};

sdpa::TensorView V(const std::vector<float>& x, std::vector<std::int64_t> shape) {
  return sdpa::TensorView(x.data(), DType::kFloat32, Layout::Contiguous(shape));
}
sdpa::MutableTensorView M(std::vector<float>& x, std::vector<std::int64_t> shape) {
  return sdpa::MutableTensorView(x.data(), DType::kFloat32, Layout::Contiguous(shape));
}

enum class Algorithm { kRing, kUlysses };

ShardRun RunShard(const Case& c, const Full& f, const std::vector<std::int64_t>& pos,
                  Algorithm algorithm, sdpa::Progress progress) {
  const std::int64_t n = static_cast<std::int64_t>(pos.size());
  ShardRun s;
  s.q = ToFloat(RowsOf(f.q, pos));
  s.k = ToFloat(RowsOf(f.k, pos));
  s.v = ToFloat(RowsOf(f.v, pos));
  s.dout = ToFloat(RowsOf(f.dout, pos));
  const std::vector<std::int64_t> qs = {c.batch, c.heads, n, c.head_dim},
                                  ks = {c.batch, c.kv_heads, n, c.head_dim},
                                  vs = {c.batch, c.kv_heads, n, c.v_dim},
                                  os = {c.batch, c.heads, n, c.v_dim}, ls = {c.batch, c.heads, n};
  s.out.assign(static_cast<std::size_t>(Array::Count(os)), 0.0f);
  s.lse.assign(static_cast<std::size_t>(Array::Count(ls)), 0.0f);
  s.dq.assign(s.q.size(), 0.0f);
  s.dk.assign(s.k.size(), 0.0f);
  s.dv.assign(s.v.size(), 0.0f);
  sdpa::MutableTensorView lse = M(s.lse, ls);
  if (algorithm == Algorithm::kRing) {
    sdpa::Distribution d(c.layout);
    d.progress = progress;
    sdpa::RingForward(MPI_COMM_WORLD, V(s.q, qs), V(s.k, ks), V(s.v, vs), M(s.out, os), lse,
                      f.options, d);
    if (c.sinks) {
      s.dsinks.assign(static_cast<std::size_t>(c.heads), 0.0f);
      sdpa::RingBackward(MPI_COMM_WORLD, V(s.q, qs), V(s.k, ks), V(s.v, vs), V(s.out, os),
                         V(s.lse, ls), V(s.dout, os), M(s.dq, qs), M(s.dk, ks), M(s.dv, vs),
                         M(s.dsinks, {c.heads}), f.options, d);
    } else {
      sdpa::RingBackward(MPI_COMM_WORLD, V(s.q, qs), V(s.k, ks), V(s.v, vs), V(s.out, os),
                         V(s.lse, ls), V(s.dout, os), M(s.dq, qs), M(s.dk, ks), M(s.dv, vs),
                         f.options, d);
    }
  } else {
    sdpa::UlyssesForward(MPI_COMM_WORLD, V(s.q, qs), V(s.k, ks), V(s.v, vs), M(s.out, os), &lse,
                         f.options, c.layout);
    sdpa::UlyssesBackward(MPI_COMM_WORLD, V(s.q, qs), V(s.k, ks), V(s.v, vs), V(s.out, os),
                          V(s.lse, ls), V(s.dout, os), M(s.dq, qs), M(s.dk, ks), M(s.dv, vs),
                          f.options, c.layout);
  }
  return s;
}

void CheckAgainstReference(const Case& c, Algorithm algorithm) {
  SCOPED_TRACE(c.name + (algorithm == Algorithm::kRing ? " (ring)" : " (ulysses)") +
               ", P = " + std::to_string(World()));
  const std::vector<std::int64_t> lengths = Lengths(c, World());
  std::int64_t seq = 0;
  for (std::int64_t l : lengths) seq += l;
  const Full f = Reference(c, seq);
  const std::vector<std::int64_t> pos = PositionsOf(c, lengths, Rank());
  const std::int64_t n = static_cast<std::int64_t>(pos.size());
  const ShardRun s = RunShard(c, f, pos, algorithm, sdpa::Progress::kPoll);
  const double out_tol = 2e-6 * MaxAbs(f.v);
  EXPECT_TRUE(
      Within(FromFloat(s.out, {c.batch, c.heads, n, c.v_dim}), RowsOf(f.out, pos), out_tol, "out"));
  EXPECT_TRUE(Within(FromFloat(s.lse, {c.batch, c.heads, n}), RowsOf(f.lse, pos), 2e-6 * 8,
                     "lse"));  // |lse| <= log(L) + max|score| < 8 here
  EXPECT_TRUE(Within(FromFloat(s.dq, {c.batch, c.heads, n, c.head_dim}), RowsOf(f.dq, pos),
                     2e-5 * MaxAbs(f.dq), "grad_query"));
  EXPECT_TRUE(Within(FromFloat(s.dk, {c.batch, c.kv_heads, n, c.head_dim}), RowsOf(f.dk, pos),
                     2e-5 * MaxAbs(f.dk), "grad_key"));
  EXPECT_TRUE(Within(FromFloat(s.dv, {c.batch, c.kv_heads, n, c.v_dim}), RowsOf(f.dv, pos),
                     2e-5 * MaxAbs(f.dv), "grad_value"));
  if (!s.dsinks.empty()) {  // the whole sequence's sum, on every rank
    EXPECT_TRUE(
        Within(FromFloat(s.dsinks, {c.heads}), f.dsinks, 2e-5 * MaxAbs(f.dsinks), "grad_sinks"));
  }
}

TEST(Ring, EveryShardMatchesTheFullSequenceReference) {
  for (const Case& c : RingCases()) CheckAgainstReference(c, Algorithm::kRing);
}

TEST(Ring, ProgressModesAndRepeatedRunsAreBitwiseIdentical) {
  const Case c = RingCases()[0];
  const std::vector<std::int64_t> lengths = Lengths(c, World());
  std::int64_t seq = 0;
  for (std::int64_t l : lengths) seq += l;
  const Full f = Reference(c, seq);
  const std::vector<std::int64_t> pos = PositionsOf(c, lengths, Rank());
  const ShardRun a = RunShard(c, f, pos, Algorithm::kRing, sdpa::Progress::kPoll);
  for (sdpa::Progress p : {sdpa::Progress::kPoll, sdpa::Progress::kThread, sdpa::Progress::kNone}) {
    const ShardRun b = RunShard(c, f, pos, Algorithm::kRing, p);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_EQ(a.dq, b.dq);
    EXPECT_EQ(a.dk, b.dk);
    EXPECT_EQ(a.dv, b.dv);
  }
}

TEST(Ring, ProfileHasOneEntryPerStep) {
  const Case c = RingCases()[0];
  const std::vector<std::int64_t> lengths = Lengths(c, World());
  const std::int64_t n = lengths[static_cast<std::size_t>(Rank())];
  std::vector<float> q(static_cast<std::size_t>(c.heads * n * c.head_dim), 0.5f),
      kv(static_cast<std::size_t>(c.kv_heads * n * c.head_dim), 0.25f),
      out(static_cast<std::size_t>(c.heads * n * c.v_dim));
  sdpa::RingProfile profile;
  sdpa::Distribution d(c.layout);
  d.profile = &profile;
  sdpa::RingForward(MPI_COMM_WORLD, V(q, {1, c.heads, n, c.head_dim}),
                    V(kv, {1, c.kv_heads, n, c.head_dim}), V(kv, {1, c.kv_heads, n, c.v_dim}),
                    M(out, {1, c.heads, n, c.v_dim}), sdpa::Options{}, d);
  ASSERT_EQ(profile.steps.size(), static_cast<std::size_t>(World()));
  const std::int64_t block = c.kv_heads * n * (c.head_dim + c.v_dim) * 4;
  for (int t = 0; t < World(); ++t) {
    EXPECT_EQ(profile.steps[static_cast<std::size_t>(t)].bytes_sent, t + 1 < World() ? block : 0);
  }
  EXPECT_GE(profile.total_seconds, 0.0);
}

TEST(Ulysses, EveryShardMatchesTheFullSequenceReference) {
  const int P = World();
  std::vector<Case> cases = {
      {"zigzag causal GQA", 1, 2 * P, P, 8, 8, 3, 0, true, SequenceLayout::kZigzag},
      {"contiguous uneven Dv!=D", 2, P, P, 8, 4, 5, 2, false, SequenceLayout::kContiguous},
  };
  Case windowed{"contiguous causal window alibi sinks",
                1,
                P,
                P,
                8,
                8,
                6,
                1,
                true,
                SequenceLayout::kContiguous};
  windowed.sinks = true;
  windowed.window = sdpa::Window{4, 0};
  windowed.alibi = true;
  cases.push_back(windowed);
  for (const Case& c : cases) CheckAgainstReference(c, Algorithm::kUlysses);
}

// Collects what every rank threw: "" for no error.
std::string Thrown(const std::function<void()>& call) {
  try {
    call();
  } catch (const sdpa::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Ulysses, HeadsThatDoNotDivideAreRefusedOnEveryRank) {
  const int P = World();
  if (P == 1) GTEST_SKIP() << "every head count divides by 1";
  const std::int64_t H = P + 1, n = 2;
  std::vector<float> q(static_cast<std::size_t>(H * n * 4), 0.0f), out(q.size());
  const std::string error = Thrown([&] {
    sdpa::UlyssesForward(MPI_COMM_WORLD, V(q, {1, H, n, 4}), V(q, {1, H, n, 4}), V(q, {1, H, n, 4}),
                         M(out, {1, H, n, 4}), nullptr);
  });
  EXPECT_NE(error.find("UlyssesForward: query.shape[1] (heads) is " + std::to_string(H)),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("multiples of the number of ranks, " + std::to_string(P)), std::string::npos)
      << error;
}

// Gradients that share memory would be written through each other: refused by both backwards,
// whatever the number of ranks (each rank's shard overlaps alike).
TEST(Distributed, BackwardRefusesGradientsThatOverlap) {
  const std::int64_t H = 2 * World(), n = 2, D = 4;
  std::vector<float> x(static_cast<std::size_t>(H * n * D), 0.5f),
      lse(static_cast<std::size_t>(H * n)), grads(x.size() * 2);
  const auto view = [&](std::vector<float>& v) { return V(v, {1, H, n, D}); };
  const sdpa::MutableTensorView grad_query(grads.data(), {1, H, n, D});
  const sdpa::MutableTensorView grad_key(grads.data() + x.size() / 2, {1, H, n, D});  // half inside
  const sdpa::MutableTensorView grad_value(grads.data() + x.size(), {1, H, n, D});
  const std::string ring = Thrown([&] {
    sdpa::RingBackward(MPI_COMM_WORLD, view(x), view(x), view(x), view(x), V(lse, {1, H, n}),
                       view(x), grad_query, grad_key, grad_value);
  });
  EXPECT_NE(ring.find("grad_key overlaps grad_query"), std::string::npos) << ring;
  const std::string ulysses = Thrown([&] {
    sdpa::UlyssesBackward(MPI_COMM_WORLD, view(x), view(x), view(x), view(x), V(lse, {1, H, n}),
                          view(x), grad_query, grad_key, grad_value);
  });
  EXPECT_NE(ulysses.find("grad_key overlaps grad_query"), std::string::npos) << ulysses;
}

TEST(Ring, ABadArgumentOnOneRankMakesEveryRankThrow) {
  const std::int64_t n = 4;
  const std::int64_t d = Rank() == World() - 1 ? 6 : 8;  // the last rank's keys have head_dim 6
  std::vector<float> q(static_cast<std::size_t>(2 * n * 8), 0.0f),
      k(static_cast<std::size_t>(2 * n * d)), out(q.size());
  const std::string error = Thrown([&] {
    sdpa::RingForward(MPI_COMM_WORLD, V(q, {1, 2, n, 8}), V(k, {1, 2, n, d}), V(q, {1, 2, n, 8}),
                      M(out, {1, 2, n, 8}));
  });
  if (Rank() == World() - 1) {
    EXPECT_EQ(error, "sdpa: key.shape[3] (head_dim) is 6 but query.shape[3] is 8");
  } else {
    EXPECT_EQ(error, "sdpa: RingForward: the arguments of rank " + std::to_string(World() - 1) +
                         " are invalid (that rank's error says why)");
  }
  // A supported option that the ranks see differently is caught by the shapes it implies.
  const std::string refused = Thrown([&] {
    sdpa::Options o;
    o.window = sdpa::Window{2, 0};
    sdpa::RingForward(MPI_COMM_WORLD, V(q, {1, 2, n, 8}), V(q, {1, 2, n, 8}), V(q, {1, 2, n, 8}),
                      M(out, {1, 2, n, 8}), o);
  });
  EXPECT_NE(refused.find("RingForward: options.window is not supported by ring attention"),
            std::string::npos)
      << refused;
  // zigzag needs equal, even shards
  const std::int64_t odd = 3;
  std::vector<float> q3(static_cast<std::size_t>(2 * odd * 8), 0.0f), out3(q3.size());
  const std::string zigzag = Thrown([&] {
    sdpa::RingForward(MPI_COMM_WORLD, V(q3, {1, 2, odd, 8}), V(q3, {1, 2, odd, 8}),
                      V(q3, {1, 2, odd, 8}), M(out3, {1, 2, odd, 8}));
  });
  EXPECT_NE(zigzag.find("the zigzag layout needs every shard of the same even length"),
            std::string::npos)
      << zigzag;
}

// Every rank interrupted during its first block: each throws sdpa::Interrupted with its messages
// in flight (cancelled and released), and the next call on the communicator works.
TEST(Ring, InterruptOnEveryRankThrowsAndTheNextCallWorks) {
  const std::int64_t n = 1024, H = 2, D = 64;
  std::vector<float> q(static_cast<std::size_t>(H * n * D), 0.25f), out(q.size());
  sdpa::Options stop;
  stop.interrupt = [] { return true; };
  bool interrupted = false;
  try {
    sdpa::RingForward(MPI_COMM_WORLD, V(q, {1, H, n, D}), V(q, {1, H, n, D}), V(q, {1, H, n, D}),
                      M(out, {1, H, n, D}), stop, SequenceLayout::kContiguous);
  } catch (const sdpa::Interrupted&) {
    interrupted = true;
  }
  EXPECT_TRUE(interrupted);
  MPI_Barrier(MPI_COMM_WORLD);
  sdpa::RingForward(MPI_COMM_WORLD, V(q, {1, H, n, D}), V(q, {1, H, n, D}), V(q, {1, H, n, D}),
                    M(out, {1, H, n, D}), sdpa::Options{}, SequenceLayout::kContiguous);
  EXPECT_NEAR(out[0], 0.25f, 1e-6);  // uniform values attend to 0.25
}

TEST(Layouts, ShardAndPlaceRoundTripAndZigzagIsTheRingFlashAttentionOrder) {
  const int P = World();
  const std::int64_t L = 4 * P;
  // P = 3: ranks hold chunks (0, 5), (1, 4), (2, 3) of size 2.
  std::vector<std::int64_t> seen;
  for (int r = 0; r < P; ++r) {
    const std::vector<std::int64_t> pos = sdpa::ShardPositions(SequenceLayout::kZigzag, L, r, P);
    ASSERT_EQ(pos.size(), 4u);
    EXPECT_EQ(pos[0], 2 * r);
    EXPECT_EQ(pos[2], 2 * (2 * P - 1 - r));
    seen.insert(seen.end(), pos.begin(), pos.end());
  }
  std::sort(seen.begin(), seen.end());
  for (std::int64_t i = 0; i < L; ++i) EXPECT_EQ(seen[static_cast<std::size_t>(i)], i);
  for (SequenceLayout layout : {SequenceLayout::kZigzag, SequenceLayout::kContiguous}) {
    const std::int64_t seq = layout == SequenceLayout::kZigzag ? L : L + 1;
    const Array full = Array::Uniform({2, seq, 3}, 5).RoundedToFloat();
    const std::vector<float> f = ToFloat(full);
    std::vector<float> back(f.size(), 0.0f);
    for (int r = 0; r < P; ++r) {
      const std::int64_t n = sdpa::ShardLength(layout, seq, r, P);
      std::vector<float> shard(static_cast<std::size_t>(2 * n * 3));
      sdpa::ShardSequence(
          sdpa::TensorView(f.data(), DType::kFloat32, Layout::Contiguous({2, seq, 3})),
          sdpa::MutableTensorView(shard.data(), DType::kFloat32, Layout::Contiguous({2, n, 3})),
          layout, r, P);
      sdpa::PlaceShard(
          sdpa::TensorView(shard.data(), DType::kFloat32, Layout::Contiguous({2, n, 3})),
          sdpa::MutableTensorView(back.data(), DType::kFloat32, Layout::Contiguous({2, seq, 3})),
          layout, r, P);
    }
    EXPECT_EQ(back, f) << sdpa::SequenceLayoutName(layout);
  }
  EXPECT_THROW(sdpa::ShardLength(SequenceLayout::kZigzag, 2 * P + 1, 0, P), sdpa::Error);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (Rank() == 0 && any != 0 && failed == 0)
    std::fprintf(stderr, "a test failed on another rank\n");
  MPI_Finalize();
  return any;
}
