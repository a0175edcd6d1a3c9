// 16-bit storage and KV caches on every SIMD target compiled in (the conversions at the pack
// seams and the dot form's in-register widening differ per target): the same cases and bounds as
// tests/api/half_test.cc and kv_cache_test.cc, with the engine forced to each target.
#include <gtest/gtest.h>

#include <cstdint>

#include "cpu/simd.h"
#include "testing/half_cases.h"
#include "testing/kv_cache_cases.h"
#include "testing/on_target.h"

namespace {

using sdpa::bfloat16;
using sdpa::float16;

class StorageOnTarget : public sdpa_test::OnTarget {};

TEST_P(StorageOnTarget, BFloat16Forward) {
  sdpa_test::CheckForward<bfloat16, bfloat16>(sdpa_test::kOutBound<bfloat16>);
}
TEST_P(StorageOnTarget, Float16Forward) {
  sdpa_test::CheckForward<float16, float16>(sdpa_test::kOutBound<float16>);
}
TEST_P(StorageOnTarget, Float32QueriesOnBFloat16) {
  sdpa_test::CheckForward<float, bfloat16>(sdpa_test::kMixedBound);
}
TEST_P(StorageOnTarget, BFloat16Backward) { sdpa_test::CheckBackward<bfloat16>(); }
TEST_P(StorageOnTarget, Float16Backward) { sdpa_test::CheckBackward<float16>(); }

TEST_P(StorageOnTarget, KvCaches) {
  for (const sdpa_test::Case& c : sdpa_test::Cases()) {
    sdpa_test::CheckAgainstForward<float, float>(c, 2e-6);
    sdpa_test::CheckAgainstForward<bfloat16, bfloat16>(c, 5e-3);
    sdpa_test::CheckAgainstForward<float16, float>(c, 1e-3);
    sdpa_test::CheckAgainstForward<std::int8_t, float>(c, 2e-6);
  }
}

TEST_P(StorageOnTarget, ForcedTargetTakesEffect) {
  EXPECT_EQ(sdpa::cpu::ActiveSimdTarget(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(AllTargets, StorageOnTarget, ::testing::ValuesIn(sdpa::cpu::SimdTargets()),
                         sdpa_test::TargetName);

}  // namespace
