#include "cpu/simd.h"

#include <cstdint>
#include <cstdlib>
#include <mutex>

// Compile the small per-target probes below once per target.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/simd.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace sdpa::cpu {
namespace HWY_NAMESPACE {

std::int64_t TargetBit() { return HWY_TARGET; }
int FloatLanes() {
  return static_cast<int>(hwy::HWY_NAMESPACE::Lanes(hwy::HWY_NAMESPACE::ScalableTag<float>()));
}

}  // namespace HWY_NAMESPACE
}  // namespace sdpa::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "core/fail.h"

namespace sdpa::cpu {

HWY_EXPORT(TargetBit);
HWY_EXPORT(FloatLanes);

namespace {

std::int64_t TargetByName(const std::string& name) {
  for (std::int64_t bit : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(bit)) return bit;
  }
  return 0;
}

std::string JoinedTargets() {
  std::string joined;
  for (const std::string& name : SimdTargets()) joined += (joined.empty() ? "" : ", ") + name;
  return joined;
}

}  // namespace

std::vector<std::string> SimdTargets() {
  std::vector<std::string> names;
  // Ask without a forced target so the list shows everything this machine can run.
  for (std::int64_t bit : hwy::SupportedAndGeneratedTargets())
    names.push_back(hwy::TargetName(bit));
  return names;
}

std::string ActiveSimdTarget() {
  ApplySimdTargetFromEnvironment();
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetBit)());
}

int ActiveFloatLanes() {
  ApplySimdTargetFromEnvironment();
  return HWY_DYNAMIC_DISPATCH(FloatLanes)();
}

void ForceSimdTarget(const std::string& name) {
  hwy::SetSupportedTargetsForTest(0);  // list against the real CPU, not an earlier override
  std::int64_t bit = 0;
  if (!name.empty()) {
    bit = TargetByName(name);
    if (bit == 0) {
      internal::Fail("SIMD target '", name, "' is not available; available: ", JoinedTargets());
    }
  }
  hwy::SetSupportedTargetsForTest(bit);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
}

void ApplySimdTargetFromEnvironment() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("SDPA_SIMD_TARGET");
    if (env != nullptr && env[0] != '\0') ForceSimdTarget(env);
  });
}

}  // namespace sdpa::cpu
#endif  // HWY_ONCE
