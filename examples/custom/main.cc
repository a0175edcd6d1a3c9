// Document masking and prefix-LM as custom mask functions (sdpa/custom.h), each checked against
// the same attention with an explicit bool mask (Options::mask). Prints the largest difference of
// each and "ok"; exits with 1 on a mismatch.
//
// Document masking: documents packed back to back in one sequence; token i sees token j iff both
// are in the same document and j <= i. mask_mod says that for one (i, j); block_mask says it for a
// whole block of queries [q_begin, q_end) and keys [k_begin, k_end), so the engine skips blocks it
// calls kEmpty without computing a score and calls no mask_mod in blocks it calls kFull.
// Prefix-LM: the first `prefix` tokens see each other in both directions; every later token sees
// the prefix and, causally, the tokens after it up to itself.
#include <sdpa/sdpa.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr std::int64_t kBatch = 2, kHeads = 8, kKvHeads = 2, kLen = 300, kHeadDim = 64;
constexpr double kTolerance = 1e-5;  // both runs are float32 on the same engine

sdpa::Tensor RandomTensor(const std::vector<std::int64_t>& shape, unsigned seed) {
  sdpa::Tensor t(sdpa::DType::kFloat32, shape);
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  float* x = t.data<float>();
  for (std::int64_t n = 0; n < t.size(); ++n) x[n] = uniform(generator);
  return t;
}

// A bool mask [batch, 1, L, L] (the same for every head) holding allowed(b, i, j).
template <class Allowed>
sdpa::Tensor BoolMask(const Allowed& allowed) {
  sdpa::Tensor mask(sdpa::DType::kBool, {kBatch, 1, kLen, kLen});
  bool* m = mask.data<bool>();
  for (std::int64_t b = 0; b < kBatch; ++b) {
    for (std::int64_t i = 0; i < kLen; ++i) {
      for (std::int64_t j = 0; j < kLen; ++j) m[(b * kLen + i) * kLen + j] = allowed(b, 0, i, j);
    }
  }
  return mask;
}

double MaxDifference(const sdpa::Tensor& a, const sdpa::Tensor& b) {
  double largest = 0;
  for (std::int64_t n = 0; n < a.size(); ++n) {
    largest = std::max(largest, std::fabs(static_cast<double>(a.data<float>()[n]) -
                                          static_cast<double>(b.data<float>()[n])));
  }
  return largest;
}

bool Report(const char* name, double difference) {
  const bool ok = difference <= kTolerance;
  std::printf("%s: max |custom - bool mask| = %.3g %s\n", name, difference, ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  const sdpa::Tensor q = RandomTensor({kBatch, kHeads, kLen, kHeadDim}, 1);
  const sdpa::Tensor k = RandomTensor({kBatch, kKvHeads, kLen, kHeadDim}, 2);
  const sdpa::Tensor v = RandomTensor({kBatch, kKvHeads, kLen, kHeadDim}, 3);
  bool ok = true;

  // Document masking. doc[b·L + i] is the document of token i of batch entry b; ids increase
  // along the sequence, so a block's queries lie in documents doc[q_begin] .. doc[q_end - 1] and
  // its keys in doc[k_begin] .. doc[k_end - 1].
  const std::vector<std::vector<std::int64_t>> lengths = {{37, 100, 3, 96, 64}, {150, 150}};
  std::vector<std::int64_t> doc;
  for (const auto& documents : lengths) {
    for (std::size_t d = 0; d < documents.size(); ++d) {
      doc.insert(doc.end(), static_cast<std::size_t>(documents[d]), static_cast<std::int64_t>(d));
    }
  }
  const auto doc_of = [&doc](std::int64_t b, std::int64_t i) {
    return doc[static_cast<std::size_t>(b * kLen + i)];
  };
  const auto same_document_causal = [&doc_of](auto b, auto /*h*/, auto i, auto j) {
    return j <= i && doc_of(b, i) == doc_of(b, j);
  };
  const auto document_blocks = [&doc_of](std::int64_t b, std::int64_t /*h*/, std::int64_t q_begin,
                                         std::int64_t q_end, std::int64_t k_begin,
                                         std::int64_t k_end) {
    const std::int64_t q_first = doc_of(b, q_begin), q_last = doc_of(b, q_end - 1);
    const std::int64_t k_first = doc_of(b, k_begin), k_last = doc_of(b, k_end - 1);
    if (k_begin > q_end - 1 || k_last < q_first || k_first > q_last) return sdpa::BlockKind::kEmpty;
    if (q_first == q_last && k_first == k_last && q_first == k_first && k_end - 1 <= q_begin) {
      return sdpa::BlockKind::kFull;
    }
    return sdpa::BlockKind::kPartial;
  };
  {
    const auto documents =
        sdpa::MakeCustom(sdpa::NoScoreMod{}, same_document_causal, document_blocks);
    const sdpa::Tensor out = sdpa::Attention(q.view(), k.view(), v.view(), documents.With({}));
    const sdpa::Tensor mask = BoolMask(same_document_causal);
    sdpa::Options options;
    options.mask = mask.view();
    const sdpa::Tensor want = sdpa::Attention(q.view(), k.view(), v.view(), options);
    ok = Report("document masking", MaxDifference(out, want)) && ok;
  }

  // Prefix-LM, with a different prefix per batch entry.
  const std::int64_t prefix[kBatch] = {64, 200};
  const auto prefix_lm = [&prefix](auto b, auto /*h*/, auto i, auto j) {
    return j < prefix[b] || j <= i;
  };
  const auto prefix_blocks = [&prefix](std::int64_t b, std::int64_t /*h*/, std::int64_t q_begin,
                                       std::int64_t q_end, std::int64_t k_begin,
                                       std::int64_t k_end) {
    if (k_end <= prefix[b] || k_end - 1 <= q_begin) return sdpa::BlockKind::kFull;
    if (k_begin >= prefix[b] && k_begin > q_end - 1) return sdpa::BlockKind::kEmpty;
    return sdpa::BlockKind::kPartial;
  };
  {
    const auto custom = sdpa::MakeCustom(sdpa::NoScoreMod{}, prefix_lm, prefix_blocks);
    const sdpa::Tensor out = sdpa::Attention(q.view(), k.view(), v.view(), custom.With({}));
    const sdpa::Tensor mask = BoolMask(prefix_lm);
    sdpa::Options options;
    options.mask = mask.view();
    const sdpa::Tensor want = sdpa::Attention(q.view(), k.view(), v.view(), options);
    ok = Report("prefix-LM", MaxDifference(out, want)) && ok;
  }

  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
