// MergePartials (sdpa/merge.h): Forward with lse over disjoint key pieces, merged, equals
// attention over all the keys (the long-double naive attention and one Forward); empty pieces and
// fully masked rows; the identities of the merge; in-place merging; every validation message.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/naive_attention.h"
#include "testing/tensors.h"

namespace {

using sdpa::DType;
using sdpa_test::AllClose;
using sdpa_test::Array;
using sdpa_test::BitwiseEqual;
using sdpa_test::Buffer;
using sdpa_test::NaiveProblem;
using sdpa_test::Tolerance;

constexpr double kInf = std::numeric_limits<double>::infinity();

// A view of keys [begin, end) of a rank-4 view (dimension 2), or of columns of a mask (dim 3).
template <typename V>
V Slice(V view, int dim, std::int64_t begin, std::int64_t end) {
  using Byte = std::conditional_t<std::is_same_v<V, sdpa::TensorView>, const char, char>;
  view.data = static_cast<Byte*>(view.data) +
              begin * view.layout.strides[dim] * static_cast<std::int64_t>(DTypeSize(view.dtype));
  view.layout.shape[dim] = end - begin;
  return view;
}

struct MergeCase {
  std::string name;
  std::int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, v_dim;
  std::vector<std::int64_t> cuts;  // piece boundaries inside [0, kv_len]; equal cuts = empty pieces
  sdpa::Causal causal = sdpa::Causal::kNone;
  bool masked_rows = false;  // a bool mask that hides every key from some rows
  Tolerance tol{2e-6, 2e-6};
};

std::vector<MergeCase> Cases() {
  return {
      {"two halves", 1, 2, 2, 5, 16, 8, 8, {8}},
      {"uneven GQA Dv!=D", 2, 4, 2, 7, 37, 16, 5, {1, 17, 30}},
      {"empty pieces", 1, 2, 1, 3, 12, 4, 4, {0, 0, 6, 6, 12}},
      {"one key per piece", 1, 1, 1, 2, 5, 3, 3, {1, 2, 3, 4}},
      {"causal: late pieces empty for early rows",
       1,
       2,
       2,
       9,
       9,
       8,
       8,
       {3, 6},
       sdpa::Causal::kTopLeft},
      {"fully masked rows", 2, 2, 1, 6, 20, 8, 4, {4, 13}, sdpa::Causal::kNone, true},
  };
}

// Runs Forward with lse on each key piece, merges, and compares with the naive attention over
// all keys and with one Forward over all keys.
void CheckCase(const MergeCase& c) {
  SCOPED_TRACE(c.name);
  const Array q = Array::Uniform({c.batch, c.heads, c.q_len, c.head_dim}, 1).RoundedToFloat();
  const Array k = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.head_dim}, 2).RoundedToFloat();
  const Array v = Array::Uniform({c.batch, c.kv_heads, c.kv_len, c.v_dim}, 3).RoundedToFloat();
  Array mask({c.batch, c.heads, c.q_len, c.kv_len}, 1.0);
  if (c.masked_rows) {
    sdpa_test::Random random(4);
    for (std::int64_t n = 0; n < mask.size(); ++n) {
      const std::int64_t row = n / c.kv_len;
      // rows 0 and 3 of each head see nothing; others lose some keys
      const bool hidden = row % c.q_len == 0 || row % c.q_len == 3 || random.Bernoulli(0.3);
      mask.values[static_cast<std::size_t>(n)] = hidden ? 0.0 : 1.0;
    }
  }
  // The pieces see the causal rule through a bool mask (key j <= row i over all keys), since
  // each piece on its own has other positions.
  Array piece_mask = mask;
  for (std::int64_t n = 0; n < piece_mask.size(); ++n) {
    const std::int64_t j = n % c.kv_len, i = (n / c.kv_len) % c.q_len;
    if (c.causal != sdpa::Causal::kNone && j > i)
      piece_mask.values[static_cast<std::size_t>(n)] = 0;
  }
  const Buffer<float> bq(q), bk(k), bv(v);
  const Buffer<bool> bmask(mask), bpiece(piece_mask);
  sdpa::Options options;
  options.causal = c.causal;
  if (c.masked_rows) options.mask = bmask.view();

  std::vector<std::int64_t> bounds = {0};
  bounds.insert(bounds.end(), c.cuts.begin(), c.cuts.end());
  bounds.push_back(c.kv_len);
  std::vector<Buffer<float>> outs, lses;
  for (std::size_t s = 0; s + 1 < bounds.size(); ++s) {
    const std::int64_t begin = bounds[s], end = bounds[s + 1];
    outs.emplace_back(Array({c.batch, c.heads, c.q_len, c.v_dim}));
    lses.emplace_back(Array({c.batch, c.heads, c.q_len}));
    sdpa::Options piece;
    if (c.masked_rows || c.causal != sdpa::Causal::kNone) {
      piece.mask = Slice(bpiece.view(), 3, begin, end);
    }
    sdpa::MutableTensorView lse = lses.back().mutable_view();
    sdpa::Forward(bq.view(), Slice(bk.view(), 2, begin, end), Slice(bv.view(), 2, begin, end),
                  outs.back().mutable_view(), lse, piece);
  }
  std::vector<sdpa::TensorView> out_views, lse_views;
  for (auto& b : outs) out_views.push_back(b.view());
  for (auto& b : lses) lse_views.push_back(b.view());
  const sdpa::MergedPartials merged = sdpa::MergePartials(out_views, lse_views);

  NaiveProblem naive;
  naive.query = q;
  naive.key = k;
  naive.value = v;
  naive.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  naive.causal = c.causal;
  if (c.masked_rows) {
    naive.mask_type = sdpa_test::MaskType::kBool;
    naive.mask = mask;
  }
  const sdpa_test::NaiveResult want = sdpa_test::NaiveAttention(naive);
  Array out_read({c.batch, c.heads, c.q_len, c.v_dim}), lse_read({c.batch, c.heads, c.q_len});
  for (std::int64_t n = 0; n < out_read.size(); ++n) {
    out_read.values[static_cast<std::size_t>(n)] = merged.out.data<float>()[n];
  }
  for (std::int64_t n = 0; n < lse_read.size(); ++n) {
    lse_read.values[static_cast<std::size_t>(n)] = merged.lse.data<float>()[n];
  }
  EXPECT_TRUE(AllClose(out_read, want.out, c.tol));
  EXPECT_TRUE(AllClose(lse_read, want.lse, c.tol));

  // One Forward over all keys agrees with the merge as closely as both agree with the naive one.
  const sdpa::AttentionResult whole =
      sdpa::AttentionWithLse(bq.view(), bk.view(), bv.view(), options);
  for (std::int64_t n = 0; n < out_read.size(); ++n) {
    EXPECT_NEAR(
        out_read.values[static_cast<std::size_t>(n)], whole.out.data<float>()[n],
        2 * c.tol.atol + 2 * c.tol.rtol * std::fabs(want.out.values[static_cast<std::size_t>(n)]))
        << n;
  }
}

TEST(MergePartials, PiecesOfForwardMatchAttentionOverAllKeys) {
  for (const MergeCase& c : Cases()) CheckCase(c);
}

// Hand-made partials of one row, float64, to check the formula and its identities exactly.
struct Row {
  std::vector<double> out;
  double lse;
};
std::pair<std::vector<double>, double> MergeRows(const std::vector<Row>& rows) {
  const std::int64_t dv = static_cast<std::int64_t>(rows.empty() ? 2 : rows[0].out.size());
  std::vector<Buffer<double>> outs, lses;
  for (const Row& r : rows) {
    outs.emplace_back(Array({1, dv}, r.out));
    lses.emplace_back(Array({1}, std::vector<double>{r.lse}));
  }
  std::vector<sdpa::TensorView> ov, lv;
  for (auto& b : outs) ov.push_back(b.view());
  for (auto& b : lses) lv.push_back(b.view());
  std::vector<double> out(static_cast<std::size_t>(dv), 7.0);
  double lse = 7.0;
  sdpa::MutableTensorView lse_view(&lse, {1});
  sdpa::MergePartials(ov, lv, sdpa::MutableTensorView(out.data(), {1, dv}), &lse_view);
  return {out, lse};
}

TEST(MergePartials, FormulaAndIdentities) {
  // lse = log(e^1 + e^2), weights e^1 / (e^1 + e^2) and e^2 / (e^1 + e^2).
  const auto [out, lse] = MergeRows({{{1.0, 0.0}, 1.0}, {{0.0, 1.0}, 2.0}});
  const double want_lse = std::log(std::exp(1.0) + std::exp(2.0));
  EXPECT_NEAR(lse, want_lse, 1e-15);
  EXPECT_NEAR(out[0], std::exp(1.0 - want_lse), 1e-15);
  EXPECT_NEAR(out[1], std::exp(2.0 - want_lse), 1e-15);
  // An empty partial (lse = -inf, out = NaN garbage) is the identity.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto [o2, l2] = MergeRows({{{nan, nan}, -kInf}, {{3.0, -4.0}, 0.5}});
  EXPECT_EQ(o2, (std::vector<double>{3.0, -4.0}));
  EXPECT_EQ(l2, 0.5);
  // Only empty partials: out = 0, lse = -inf, no NaN.
  const auto [o3, l3] = MergeRows({{{nan, 1.0}, -kInf}, {{2.0, nan}, -kInf}});
  EXPECT_EQ(o3, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(l3, -kInf);
  // No partial at all: the empty row.
  const auto [o4, l4] = MergeRows({});
  EXPECT_EQ(o4, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(l4, -kInf);
  // Extreme gaps stay finite: e^-160 underflows nothing in float64.
  const auto [o5, l5] = MergeRows({{{1.0, 1.0}, 80.0}, {{-1.0, 2.0}, -80.0}});
  EXPECT_NEAR(l5, 80.0, 1e-15);
  EXPECT_NEAR(o5[0], 1.0, 1e-15);
  // A NaN lse poisons the row (it is not a valid partial).
  const auto [o6, l6] = MergeRows({{{1.0, 1.0}, nan}, {{1.0, 1.0}, 0.0}});
  EXPECT_TRUE(std::isnan(l6));
}

TEST(MergePartials, CommutativeAndAssociativeUpToRounding) {
  const Row a{{0.3, -0.7, 0.1}, 1.25}, b{{-0.2, 0.4, 0.9}, -3.5}, c{{0.8, 0.05, -0.6}, 0.75};
  const auto abc = MergeRows({a, b, c});
  const auto cba = MergeRows({c, b, a});
  const auto ab = MergeRows({a, b});
  const auto ab_c = MergeRows({{ab.first, ab.second}, c});
  for (std::size_t x = 0; x < 3; ++x) {
    EXPECT_NEAR(abc.first[x], cba.first[x], 1e-15);
    EXPECT_NEAR(abc.first[x], ab_c.first[x], 1e-15);
  }
  EXPECT_NEAR(abc.second, cba.second, 1e-15);
  EXPECT_NEAR(abc.second, ab_c.second, 1e-15);
}

TEST(MergePartials, InPlaceIntoTheFirstPartialAndStridedViews) {
  const Array a = Array::Uniform({2, 3, 4}, 5), b = Array::Uniform({2, 3, 4}, 6);
  const Array la = Array::Uniform({2, 3}, 7), lb = Array::Uniform({2, 3}, 8);
  // Reference: into fresh buffers, contiguous.
  const Buffer<float> ba(a), bb(b), bla(la), blb(lb);
  const sdpa::MergedPartials want =
      sdpa::MergePartials({ba.view(), bb.view()}, {bla.view(), blb.view()});
  // In place, with a transposed, padded layout for the first partial.
  Buffer<float> ia(a, {{2, 0, 1}, 1, 3, {}}), ila(la, {{1, 0}, 2, 1, {}});
  const Buffer<float> sb(b, {{}, 1, 2, {}});
  sdpa::MutableTensorView lse = ila.mutable_view();
  sdpa::MergePartials({ia.view(), sb.view()}, {ila.view(), blb.view()}, ia.mutable_view(), &lse);
  Array want_out(a.shape), want_lse(la.shape);
  for (std::int64_t n = 0; n < want_out.size(); ++n)
    want_out.values[static_cast<std::size_t>(n)] = want.out.data<float>()[n];
  for (std::int64_t n = 0; n < want_lse.size(); ++n)
    want_lse.values[static_cast<std::size_t>(n)] = want.lse.data<float>()[n];
  EXPECT_TRUE(BitwiseEqual(ia.Read(), want_out));
  EXPECT_TRUE(BitwiseEqual(ila.Read(), want_lse));
  EXPECT_TRUE(ia.OutsideUntouched());
}

// Each bad call throws sdpa::Error (DTypeError for element types) naming the argument.
TEST(MergePartials, ValidationNamesTheArgument) {
  const Buffer<float> o1(Array({2, 3, 4})), o2(Array({2, 3, 4})), l1(Array({2, 3})),
      l2(Array({2, 3}));
  const Buffer<float> o_bad(Array({2, 3, 5})), l_bad(Array({2, 4}));
  const Buffer<double> l_f64(Array({2, 3}));
  Buffer<float> out(Array({2, 3, 4})), lse(Array({2, 3}));
  auto expect_error = [&](const std::function<void()>& call, const std::string& message,
                          bool dtype = false) {
    try {
      call();
      ADD_FAILURE() << "no error; expected: " << message;
    } catch (const sdpa::DTypeError& e) {
      EXPECT_TRUE(dtype) << e.what();
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    } catch (const sdpa::Error& e) {
      EXPECT_FALSE(dtype) << e.what();
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  };
  const sdpa::MutableTensorView ov = out.mutable_view();
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view(), o2.view()}, {l1.view()}, ov);
      },
      "sdpa: lses has 1 partials but outs has 2");
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view(), o_bad.view()}, {l1.view(), l2.view()}, ov);
      },
      "sdpa: outs[1].shape is [2, 3, 5] but outs[0].shape is [2, 3, 4]");
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view(), o2.view()}, {l1.view(), l_bad.view()}, ov);
      },
      "sdpa: lses[1].shape is [2, 4] but must be [2, 3]");
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view(), o2.view()}, {l1.view(), l_f64.view()}, ov);
      },
      "sdpa: lses[1].dtype is float64 but must be float32", true);
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view()}, {l1.view()}, Buffer<float>(Array({2, 4})).mutable_view());
      },
      "sdpa: out has rank 2 but must have rank 3");
  expect_error(
      [&] {
        sdpa::MergePartials({o1.view()}, {l1.view()},
                            sdpa::MutableTensorView(const_cast<void*>(l1.view().data),
                                                    DType::kFloat32, o1.layout()));
      },
      "sdpa: out overlaps lses[0]");
  expect_error([&] { sdpa::MergePartials({}, {}); }, "sdpa: outs is empty");
  sdpa::MutableTensorView bad_lse = Buffer<float>(Array({3, 2})).mutable_view();
  expect_error([&] { sdpa::MergePartials({o1.view()}, {l1.view()}, ov, &bad_lse); },
               "sdpa: lse.shape is [3, 2] but must be [2, 3]");
}

}  // namespace
