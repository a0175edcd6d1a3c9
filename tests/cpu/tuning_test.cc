// The tuning table (cpu/tuning.h): which row a CPU gets, SDPA_TUNING's syntax and messages, what
// the schedule and Explain take from it, and that the register tiles the schedule asks for are
// the ones the kernels run on every target. The kernels' accuracy under each tuning is tested by
// the Tunings instances of forward_test.cc, backward_test.cc and variants_test.cc.
#include "cpu/tuning.h"

#include <gtest/gtest.h>

#include <string>

#include "cpu/forward.h"
#include "cpu/schedule.h"
#include "cpu/simd.h"
#include "sdpa/sdpa.h"
#include "testing/expect.h"
#include "testing/tensors.h"

namespace {

using sdpa::cpu::CpuFacts;
using sdpa::cpu::Exp2Form;
using sdpa::cpu::Tuning;

CpuFacts Cpu(const char* vendor, int family, int model, bool avx512, std::int64_t l2_kib) {
  CpuFacts cpu;
  cpu.vendor = vendor;
  cpu.family = family;
  cpu.model = model;
  cpu.avx512 = avx512;
  cpu.l2_bytes = l2_kib * 1024;
  return cpu;
}

TEST(TuningTable, RowsByCpu) {
  struct Case {
    CpuFacts cpu;
    const char* row;
    int rows, vectors;
    std::int64_t q_tile, kv_tile;
  };
  const Case cases[] = {
      {Cpu("AuthenticAMD", 0x19, 0x11, true, 1024), "amd-zen4", 4, 4, 128, 128},  // Genoa
      {Cpu("AuthenticAMD", 0x19, 0x01, false, 512), "amd-avx2", 6, 2, 96, 128},   // Milan
      {Cpu("AuthenticAMD", 0x1A, 0x02, true, 1024), "amd-zen5", 4, 4, 128, 128},
      {Cpu("GenuineIntel", 6, 0x8F, true, 2048), "intel-avx512-server", 4, 4, 128, 128},
      {Cpu("GenuineIntel", 6, 0x6A, true, 1280), "intel-avx512-server", 4, 4, 128, 128},
      {Cpu("GenuineIntel", 6, 0x55, true, 1024), "intel-avx512-server", 4, 4, 128, 128},
      {Cpu("GenuineIntel", 6, 0x8C, true, 1280), "intel-avx512-client", 6, 2, 96, 128},
      {Cpu("GenuineIntel", 6, 0x97, false, 1280), "intel-avx2", 6, 2, 96, 128},  // Alder Lake
      {Cpu("GenuineIntel", 6, 0x5E, false, 256), "intel-avx2", 6, 2, 96, 64},    // small L2
      {Cpu("", 0, 0, false, 0), "generic", 6, 2, 96, 128},
  };
  for (const Case& c : cases) {
    const Tuning t = sdpa::cpu::TuningFor(c.cpu);
    SCOPED_TRACE(t.ToString());
    EXPECT_EQ(t.name, c.row);
    EXPECT_EQ(t.micro_rows, c.rows);
    EXPECT_EQ(t.micro_vectors, c.vectors);
    EXPECT_EQ(t.q_tile, c.q_tile);
    EXPECT_EQ(t.kv_tile, c.kv_tile);
  }
}

TEST(TuningTable, DetectsThisCpu) {
  const CpuFacts cpu = sdpa::cpu::DetectCpu();
#if defined(__x86_64__)
  EXPECT_FALSE(cpu.vendor.empty());
  EXPECT_GT(cpu.family, 0);
#endif
  const Tuning t = sdpa::cpu::TuningFor(cpu);
  EXPECT_NE(t.source.find("CPUID"), std::string::npos) << t.source;
}

TEST(TuningSpec, NamesAndKeysApplyInOrder) {
  const Tuning base = sdpa::cpu::TuningFor(Cpu("AuthenticAMD", 0x19, 0x11, true, 1024));
  Tuning t = sdpa::cpu::ParseTuning("intel-avx512-server", base);
  EXPECT_EQ(t.name, "intel-avx512-server");
  EXPECT_EQ(t.micro_rows, 4);
  EXPECT_NE(t.source.find("SDPA_TUNING=intel-avx512-server"), std::string::npos);
  t = sdpa::cpu::ParseTuning("micro=8x2,q_tile=64,kv_tile=32,exp2=estrin,lazy_rescale=0", base);
  EXPECT_EQ(t.name, "amd-zen4");
  EXPECT_EQ(t.micro_rows, 8);
  EXPECT_EQ(t.micro_vectors, 2);
  EXPECT_EQ(t.q_tile, 64);
  EXPECT_EQ(t.kv_tile, 32);
  EXPECT_EQ(t.exp2, Exp2Form::kEstrin);
  EXPECT_EQ(t.lazy_rescale, 0);
  t = sdpa::cpu::ParseTuning("generic,q_tile=48", base);
  EXPECT_EQ(t.name, "generic");
  EXPECT_EQ(t.q_tile, 48);
  EXPECT_EQ(
      t.ToString().rfind("generic: micro 6x2, tiles 48x128, exp2 horner, lazy rescale 2^8", 0), 0u)
      << t.ToString();
}

TEST(TuningSpec, BadValuesNameThePart) {
  const Tuning base;
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::cpu::ParseTuning("zen9", base); },
                                     "SDPA_TUNING: unknown tuning 'zen9'; known: generic, "));
  EXPECT_TRUE(
      sdpa_test::ThrowsError([&] { sdpa::cpu::ParseTuning("micro=6", base); },
                             "SDPA_TUNING: micro must be ROWSxVECTORS (e.g. 6x2), got '6'"));
  EXPECT_TRUE(
      sdpa_test::ThrowsError([&] { sdpa::cpu::ParseTuning("q_tile=0", base); },
                             "SDPA_TUNING: q_tile must be an integer in [1, 4096], got '0'"));
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::cpu::ParseTuning("exp2=taylor", base); },
                                     "SDPA_TUNING: exp2 must be horner or estrin, got 'taylor'"));
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::cpu::ParseTuning("tiles=3", base); },
                                     "SDPA_TUNING: unknown key 'tiles'"));
}

// The environment variable reaches Explain (q_tile, kv_tile, reason) and SystemInfo.
TEST(TuningSpec, EnvironmentVariableTakesEffect) {
  sdpa_test::ScopedEnv env("SDPA_TUNING", "q_tile=64,kv_tile=32,exp2=estrin");
  sdpa::cpu::ForceTuning("");  // forget the tuning read before this test
  const sdpa_test::Array q = sdpa_test::Array::Uniform({1, 2, 300, 16}, 1);
  sdpa_test::Buffer<float> qb(q);
  const sdpa::Plan plan = sdpa::Explain(qb.view(), qb.view(), qb.view());
  EXPECT_EQ(plan.q_tile, 64);
  EXPECT_EQ(plan.kv_tile, 32);
  EXPECT_NE(plan.reason.find("exp2 estrin"), std::string::npos) << plan.reason;
  EXPECT_NE(sdpa::GetSystemInfo().tuning.find("SDPA_TUNING=q_tile=64"), std::string::npos);
  sdpa::cpu::ForceTuning("");
}

TEST(TuningSpec, BadEnvironmentVariableIsAnError) {
  {
    sdpa_test::ScopedEnv env("SDPA_TUNING", "micro=9");
    sdpa::cpu::ForceTuning("");
    const sdpa_test::Array q = sdpa_test::Array::Uniform({1, 1, 4, 4}, 1);
    sdpa_test::Buffer<float> qb(q);
    EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::Explain(qb.view(), qb.view(), qb.view()); },
                                       "SDPA_TUNING: micro must be ROWSxVECTORS"));
  }
  sdpa::cpu::ForceTuning("");
}

// The schedule asks for a register tile only if the kernels of the target carry it, and the
// kernels run exactly what it asks for.
TEST(TuningShapes, ScheduleAndKernelsAgreeOnEveryTarget) {
  sdpa::internal::Problem p;
  p.batch = 1;
  p.heads = p.kv_heads = 2;
  p.q_len = p.kv_len = 300;
  p.head_dim = p.v_dim = 128;
  for (const std::string& target : sdpa::cpu::SimdTargets()) {
    sdpa::cpu::ForceSimdTarget(target);
    const int lanes = sdpa::cpu::ActiveFloatLanes();
    for (const bool is_double : {false, true}) {
      p.compute = is_double ? sdpa::DType::kFloat64 : sdpa::DType::kFloat32;
      p.q.dtype = p.kv.k.dtype = p.kv.v.dtype = p.compute;
      for (const auto& [rows, vectors] : {std::pair{6, 2}, {4, 4}, {8, 2}, {5, 3}}) {
        SCOPED_TRACE(target + (is_double ? " f64 " : " f32 ") + std::to_string(rows) + "x" +
                     std::to_string(vectors));
        Tuning t;
        t.micro_rows = rows;
        t.micro_vectors = vectors;
        const sdpa::cpu::Schedule s = sdpa::cpu::MakeSchedule(p, 2, t, target, lanes);
        const int asked = 16 * s.micro_rows + s.micro_vectors;
        EXPECT_EQ(sdpa::cpu::DispatchedShape(is_double, s.micro_rows, s.micro_vectors), asked);
        EXPECT_EQ(sdpa::cpu::DispatchedShape(is_double, rows, vectors) == 16 * rows + vectors,
                  sdpa::cpu::ShapeCompiled(target, is_double, rows, vectors));
        const sdpa::cpu::Schedule b = sdpa::cpu::MakeBackwardSchedule(p, 2, t, target, lanes);
        EXPECT_EQ(16 * b.micro_rows + b.micro_vectors, asked);
      }
    }
  }
  sdpa::cpu::ForceSimdTarget("");
}

// A register tile wider than v_dim's multiple of lanes falls back to 6x2 and says why.
TEST(TuningShapes, NarrowValuesKeepTheDefaultTile) {
  sdpa::internal::Problem p;
  p.batch = 1;
  p.heads = p.kv_heads = 1;
  p.q_len = p.kv_len = 200;
  p.head_dim = 64;
  p.v_dim = 32;
  Tuning t;
  t.micro_rows = t.micro_vectors = 4;
  const sdpa::cpu::Schedule s = sdpa::cpu::MakeSchedule(p, 1, t, "AVX3", 16);
  EXPECT_EQ(s.micro_rows, 6);
  EXPECT_EQ(s.micro_vectors, 2);
  EXPECT_NE(s.reason.find("micro 4x4 would pad v_dim to a multiple of 64, so 6x2"),
            std::string::npos)
      << s.reason;
  p.v_dim = 64;
  EXPECT_EQ(sdpa::cpu::MakeSchedule(p, 1, t, "AVX3", 16).micro_rows, 4);
  EXPECT_EQ(sdpa::cpu::MakeSchedule(p, 1, t, "AVX2", 8).micro_rows, 6);
}

}  // namespace
