// The ring's math without MPI: P virtual ranks in one process run the same steps as RingForward /
// RingBackward (dist/ring_steps.h), with the K/V blocks and the dK/dV accumulators handed on in
// ring order, and every virtual rank's rows are compared with the float64 reference on the full
// sequence (same bounds as distributed_test.cc). Runs in every build, with or without MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "dist/layout.h"
#include "dist/ring_steps.h"
#include "sdpa/sdpa.h"
#include "sdpa/sequence_layout.h"
#include "testing/tensors.h"

namespace {

using sdpa::DType;
using sdpa::Layout;
using sdpa::SequenceLayout;
using sdpa_test::Array;

struct SimCase {
  std::string name;
  int world;
  std::int64_t heads, kv_heads, head_dim, v_dim;
  std::vector<std::int64_t> lengths;  // per virtual rank
  bool causal;
  SequenceLayout layout;
};

std::vector<SimCase> Cases() {
  return {
      {"P=1 zigzag causal", 1, 2, 1, 8, 8, {10}, true, SequenceLayout::kZigzag},
      {"P=2 zigzag causal GQA", 2, 4, 2, 16, 8, {12, 12}, true, SequenceLayout::kZigzag},
      {"P=3 zigzag non-causal", 3, 2, 2, 8, 12, {6, 6, 6}, false, SequenceLayout::kZigzag},
      {"P=4 zigzag causal MQA", 4, 4, 1, 8, 8, {8, 8, 8, 8}, true, SequenceLayout::kZigzag},
      {"P=8 zigzag causal", 8, 2, 2, 8, 8, std::vector<std::int64_t>(8, 4), true,
       SequenceLayout::kZigzag},
      {"P=3 contiguous causal uneven, empty shard",
       3,
       2,
       1,
       8,
       8,
       {9, 0, 8},
       true,
       SequenceLayout::kContiguous},
      {"P=4 contiguous non-causal odd",
       4,
       2,
       2,
       8,
       8,
       {5, 4, 4, 4},
       false,
       SequenceLayout::kContiguous},
  };
}

std::vector<float> F(const Array& a) {
  return std::vector<float>(a.values.begin(), a.values.end());
}
sdpa::TensorView V(const std::vector<float>& x, std::vector<std::int64_t> s) {
  return sdpa::TensorView(x.data(), DType::kFloat32, Layout::Contiguous(s));
}
sdpa::MutableTensorView M(std::vector<float>& x, std::vector<std::int64_t> s) {
  return sdpa::MutableTensorView(x.data(), DType::kFloat32, Layout::Contiguous(s));
}
sdpa::TensorView V64(const Array& a) {
  return sdpa::TensorView(a.values.data(), DType::kFloat64, Layout::Contiguous(a.shape));
}
sdpa::MutableTensorView M64(Array& a) {
  return sdpa::MutableTensorView(a.values.data(), DType::kFloat64, Layout::Contiguous(a.shape));
}

// Rows `pos` (dimension 2) of a rank-4 array, or of a rank-3 one.
Array RowsOf(const Array& full, const std::vector<std::int64_t>& pos) {
  std::vector<std::int64_t> shape = full.shape;
  const std::int64_t W = shape.size() == 3 ? 1 : shape[3], L = shape[2];
  const std::int64_t n = static_cast<std::int64_t>(pos.size());
  shape[2] = n;
  Array out(shape);
  for (std::int64_t bx = 0; bx < shape[0] * shape[1]; ++bx)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t e = 0; e < W; ++e)
        out.values[static_cast<std::size_t>((bx * n + i) * W + e)] =
            full.values[static_cast<std::size_t>((bx * L + pos[static_cast<std::size_t>(i)]) * W +
                                                 e)];
  return out;
}

double MaxAbs(const Array& a) {
  double m = 0;
  for (double x : a.values) m = std::max(m, std::fabs(x));
  return m;
}
::testing::AssertionResult Within(const std::vector<float>& got, const Array& want, double atol,
                                  const std::string& what) {
  for (std::size_t n = 0; n < got.size(); ++n) {
    const double x = got[n], e = want.values[n];
    if (std::isinf(x) && x == e) continue;
    if (!(std::fabs(x - e) <= atol)) {
      return ::testing::AssertionFailure() << what << ": at flat " << n << " got " << x << ", want "
                                           << e << " (atol " << atol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(SimulatedRing, EveryVirtualRankMatchesTheFullSequenceReference) {
  for (const SimCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const int P = c.world;
    std::int64_t L = 0;
    for (std::int64_t l : c.lengths) L += l;
    const std::int64_t B = 1, H = c.heads, Hkv = c.kv_heads, D = c.head_dim, Dv = c.v_dim;
    // the full problem and its float64 reference
    const Array q = Array::Uniform({B, H, L, D}, 21).RoundedToFloat();
    const Array k = Array::Uniform({B, Hkv, L, D}, 22).RoundedToFloat();
    const Array v = Array::Uniform({B, Hkv, L, Dv}, 23).RoundedToFloat();
    const Array dout = Array::Uniform({B, H, L, Dv}, 24).RoundedToFloat();
    sdpa::Options options;
    options.causal = c.causal ? sdpa::Causal::kTopLeft : sdpa::Causal::kNone;
    sdpa::Options ref = options;
    ref.backend = sdpa::Backend::kReference;
    Array out({B, H, L, Dv}), lse({B, H, L}), dq(q.shape), dk(k.shape), dv(v.shape);
    sdpa::MutableTensorView lse_view = M64(lse);
    sdpa::Forward(V64(q), V64(k), V64(v), M64(out), lse_view, ref);
    sdpa::Backward(V64(q), V64(k), V64(v), V64(out), V64(lse), V64(dout), M64(dq), M64(dk), M64(dv),
                   ref);

    // each virtual rank's shard, its geometry and its forward
    struct Rank {
      std::vector<std::int64_t> pos;
      std::vector<float> q, k, v, dout, out, lse, kv;
      sdpa::dist::RingGeometry g;
    };
    std::vector<Rank> ranks(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) {
      Rank& x = ranks[static_cast<std::size_t>(r)];
      x.pos = sdpa::dist::Positions(c.layout, c.lengths, r);
      const std::int64_t n = static_cast<std::int64_t>(x.pos.size());
      x.q = F(RowsOf(q, x.pos));
      x.k = F(RowsOf(k, x.pos));
      x.v = F(RowsOf(v, x.pos));
      x.dout = F(RowsOf(dout, x.pos));
      sdpa::dist::Shard s{B, H, Hkv, n, D, Dv};
      x.g = sdpa::dist::MakeGeometry(r, P, s, c.lengths, options, c.layout);
      x.kv.assign(static_cast<std::size_t>(x.g.KvSize(n)), 0.0f);
      sdpa::dist::PackBlock(x.g, V(x.k, {B, Hkv, n, D}), V(x.v, {B, Hkv, n, Dv}), x.kv.data());
    }
    for (int r = 0; r < P; ++r) {
      Rank& x = ranks[static_cast<std::size_t>(r)];
      const std::int64_t n = static_cast<std::int64_t>(x.pos.size());
      sdpa::dist::ForwardState state(x.g);
      for (int t = 0; t < P; ++t) {  // step t holds the block of src = r - t
        const int src = (r - t + P) % P;
        sdpa::dist::ForwardStep(x.g, V(x.q, {B, H, n, D}),
                                ranks[static_cast<std::size_t>(src)].kv.data(), src, options, {},
                                state);
      }
      x.out.assign(static_cast<std::size_t>(B * H * n * Dv), 0.0f);
      x.lse.assign(static_cast<std::size_t>(B * H * n), 0.0f);
      sdpa::MutableTensorView l = M(x.lse, {B, H, n});
      sdpa::dist::FinishForward(x.g, options, state, M(x.out, {B, H, n, Dv}), &l);
      EXPECT_TRUE(
          Within(x.out, RowsOf(out, x.pos), 2e-6 * MaxAbs(v), "out, rank " + std::to_string(r)));
      EXPECT_TRUE(Within(x.lse, RowsOf(lse, x.pos), 2e-5, "lse, rank " + std::to_string(r)));
    }
    // backward: the accumulator of block s visits ranks s, s+1, .., s+P-1 (step t on rank s+t)
    std::vector<std::vector<float>> dkv(static_cast<std::size_t>(P));
    std::vector<sdpa::dist::BackwardState> states;
    for (int r = 0; r < P; ++r) states.emplace_back(ranks[static_cast<std::size_t>(r)].g);
    for (int t = 0; t < P; ++t) {
      for (int r = 0; r < P; ++r) {
        Rank& x = ranks[static_cast<std::size_t>(r)];
        const std::int64_t n = static_cast<std::int64_t>(x.pos.size());
        const int src = (r - t + P) % P;
        sdpa::dist::BackwardStep(x.g, V(x.q, {B, H, n, D}), V(x.out, {B, H, n, Dv}),
                                 V(x.lse, {B, H, n}), V(x.dout, {B, H, n, Dv}),
                                 ranks[static_cast<std::size_t>(src)].kv.data(), src, options, {},
                                 states[static_cast<std::size_t>(r)]);
        std::vector<float>& acc = dkv[static_cast<std::size_t>(src)];
        const std::size_t size =
            static_cast<std::size_t>(x.g.KvSize(c.lengths[static_cast<std::size_t>(src)]));
        if (t == 0) acc.assign(size, 0.0f);
        for (std::size_t e = 0; e < size; ++e) {
          acc[e] = t == 0 ? states[static_cast<std::size_t>(r)].dkv_part[e]
                          : acc[e] + states[static_cast<std::size_t>(r)].dkv_part[e];
        }
      }
    }
    for (int r = 0; r < P; ++r) {
      const Rank& x = ranks[static_cast<std::size_t>(r)];
      const std::int64_t n = static_cast<std::int64_t>(x.pos.size());
      const std::vector<float>& acc = dkv[static_cast<std::size_t>(r)];
      const std::vector<float> got_dk(acc.begin(), acc.begin() + B * Hkv * n * D);
      const std::vector<float> got_dv(acc.begin() + B * Hkv * n * D, acc.end());
      EXPECT_TRUE(Within(states[static_cast<std::size_t>(r)].dq, RowsOf(dq, x.pos),
                         2e-5 * MaxAbs(dq), "grad_query, rank " + std::to_string(r)));
      EXPECT_TRUE(Within(got_dk, RowsOf(dk, x.pos), 2e-5 * MaxAbs(dk),
                         "grad_key, rank " + std::to_string(r)));
      EXPECT_TRUE(Within(got_dv, RowsOf(dv, x.pos), 2e-5 * MaxAbs(dv),
                         "grad_value, rank " + std::to_string(r)));
    }
  }
}

}  // namespace
