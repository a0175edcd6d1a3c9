// A test fixture parameterised by SIMD target, for the engine's tests (tests/cpu/): each test body
// runs with the engine forced to one target, so that every target compiled into the binary is
// checked, not only the best one of the machine. Instantiate with
// ::testing::ValuesIn(sdpa::cpu::SimdTargets()) and TargetName.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "cpu/simd.h"

namespace sdpa_test {

// Forces the target named by the parameter and restores the best target afterwards.
class OnTarget : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { sdpa::cpu::ForceSimdTarget(GetParam()); }
  void TearDown() override { sdpa::cpu::ForceSimdTarget(""); }
};

// Names each instantiated test after its target.
inline std::string TargetName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

}  // namespace sdpa_test
