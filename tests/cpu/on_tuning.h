// The engine's test fixture: a SIMD target and, optionally, a tuning (cpu/tuning.h) forced for the
// test body, so that every kernel runs on every compiled target and every register-tile shape,
// tile size and exp2 form the tuning table can choose. The parameter is "TARGET" (the detected
// tuning) or "TARGET|SPEC" with SPEC an SDPA_TUNING value. Instantiate twice:
//   INSTANTIATE_TEST_SUITE_P(AllTargets, Fixture, ValuesIn(sdpa::cpu::SimdTargets()), ParamName);
//   INSTANTIATE_TEST_SUITE_P(Tunings, Fixture, ValuesIn(sdpa_test::TunedTargets()), ParamName);
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cpu/simd.h"
#include "cpu/tuning.h"

namespace sdpa_test {

class OnTargetAndTuning : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    sdpa::cpu::ForceSimdTarget(Target());
    sdpa::cpu::ForceTuning(Spec());
  }
  void TearDown() override {
    sdpa::cpu::ForceTuning("");
    sdpa::cpu::ForceSimdTarget("");
  }
  std::string Target() const { return GetParam().substr(0, GetParam().find('|')); }
  std::string Spec() const {
    const auto bar = GetParam().find('|');
    return bar == std::string::npos ? "" : GetParam().substr(bar + 1);
  }
};

// Every register tile the kernels carry, whatever this CPU's tuning: 6x2 with 96-row tiles, 4x4
// and 8x2 (AVX-512 float; other targets fall back to 6x2 but keep the tiles), query tiles of
// 128 and 64 and key tiles of 64 (tile edges elsewhere), Estrin's exp2 and rescaling at every
// growth of the max. On AVX-512 and AVX2 (SCALAR runs the detected tuning only: it has one
// shape).
inline std::vector<std::string> TunedTargets() {
  const std::vector<std::string> specs = {
      "micro=6x2,q_tile=96,kv_tile=128",
      "micro=4x4,q_tile=128,kv_tile=128",
      "micro=8x2,q_tile=64,kv_tile=64,exp2=estrin,lazy_rescale=0",
  };
  std::vector<std::string> params;
  for (const std::string& target : sdpa::cpu::SimdTargets()) {
    if (target != "AVX3" && target != "AVX3_DL" && target != "AVX2") continue;
    for (const std::string& spec : specs) params.push_back(target + "|" + spec);
  }
  return params;
}

// "AVX3" or "AVX3_micro_4x4_q_tile_128": gtest names allow only letters, digits and '_'.
inline std::string ParamName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!ok) c = '_';
  }
  return name;
}

}  // namespace sdpa_test
