#include <gtest/gtest.h>

#include "sdpa/sdpa.h"

namespace {

TEST(Seed, ExampleFromTheTask) {
  const sdpa::Matrix out =
      sdpa::self_attention({{1, 0}, {0, 1}}, {{1, 0}, {0, 1}}, {{1, 2}, {3, 4}});
  const sdpa::Matrix expected = {{1.660477, 2.660477}, {2.339523, 3.339523}};
  ASSERT_EQ(out.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(out[i].size(), 2u);
    for (size_t j = 0; j < 2; ++j) EXPECT_NEAR(out[i][j], expected[i][j], 5e-7) << i << "," << j;
  }
}

}  // namespace
