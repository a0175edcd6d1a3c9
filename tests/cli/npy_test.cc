// The .npy reader and writer of the sdpa tool: round trips, every header version, Fortran order,
// integer index arrays (int32/int64, read with Array::Integers), and every way a file can be
// malformed (each must throw NpyError with a telling message, never
// crash or allocate what the file does not hold).
#include "npy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace sdpa::npy {
namespace {

std::vector<std::byte> Bytes(const std::string& text) {
  const auto* begin = reinterpret_cast<const std::byte*>(text.data());
  return std::vector<std::byte>(begin, begin + text.size());
}

// A .npy file with the given header dict text (padded like numpy does) and data bytes.
std::string MakeFile(const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string file = "\x93NUMPY";
  file += static_cast<char>(major);
  file += '\0';
  const auto len = static_cast<std::uint32_t>(header.size());
  for (std::size_t i = 0; i < prefix - 8; ++i) file += static_cast<char>((len >> (8 * i)) & 0xff);
  return file + header + data;
}

std::string FloatData(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// The raw little-endian bytes of integers (the tests run on little-endian machines, as the
// reader's native-order check requires for '<' files).
template <typename Int>
std::string IntData(const std::vector<Int>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(Int));
}

Array Parse(const std::string& file) {
  const std::vector<std::byte> bytes = Bytes(file);
  return ParseNpy(bytes.data(), bytes.size());
}

// Parsing `file` throws NpyError whose message contains `expected`.
void ExpectError(const std::string& file, const std::string& expected) {
  try {
    Parse(file);
    ADD_FAILURE() << "no error; expected one containing '" << expected << "'";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << expected;
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what();
  }
}

TEST(NpyWrite, HeaderIsAlignedAndReadable) {
  const std::string header = EncodeHeader(DType::kFloat32, {2, 3});
  EXPECT_EQ(header.size() % 64, 0u);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_NE(header.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            std::string::npos);
  EXPECT_NE(EncodeHeader(DType::kFloat64, {5}).find("'shape': (5,)"), std::string::npos);
  EXPECT_NE(EncodeHeader(DType::kBool, {}).find("'descr': '|b1'"), std::string::npos);
  EXPECT_NE(EncodeHeader(DType::kFloat16, {1}).find("'descr': '<f2'"), std::string::npos);
  // What np.save writes for an ml_dtypes.bfloat16 array (npy.h).
  EXPECT_NE(EncodeHeader(DType::kBFloat16, {1}).find("'descr': '<V2'"), std::string::npos);
}

struct RoundTripCase {
  const char* name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

class NpyRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(NpyRoundTrip, ReadsBackWhatItWrote) {
  const RoundTripCase& c = GetParam();
  Tensor tensor(c.dtype, c.shape);
  const std::int64_t n = tensor.size();
  for (std::int64_t i = 0; i < n; ++i) {
    if (c.dtype == DType::kFloat32) tensor.data<float>()[i] = 0.5f * static_cast<float>(i) - 3;
    if (c.dtype == DType::kFloat64) tensor.data<double>()[i] = 1e-3 * static_cast<double>(i) - 7;
    if (c.dtype == DType::kBool) tensor.data<bool>()[i] = i % 3 == 0;
    const float x = 0.25f * static_cast<float>(i) - 1;
    if (c.dtype == DType::kFloat16) tensor.data<float16>()[i] = ToFloat16(x);
    if (c.dtype == DType::kBFloat16) tensor.data<bfloat16>()[i] = ToBFloat16(x);
  }
  const std::vector<std::byte> file = EncodeNpy(tensor.view());
  const Array array = ParseNpy(file.data(), file.size());
  EXPECT_EQ(array.type(), ElementTypeOf(c.dtype));
  EXPECT_EQ(array.shape(), c.shape);
  EXPECT_FALSE(array.fortran_order());
  ASSERT_EQ(array.num_elements(), n);
  const std::size_t bytes = static_cast<std::size_t>(n) * DTypeSize(c.dtype);
  if (bytes > 0) {
    EXPECT_EQ(std::memcmp(array.data(), tensor.view().data, bytes), 0);
  }
  EXPECT_EQ(file.size(), EncodeHeader(c.dtype, c.shape).size() + bytes);
}

INSTANTIATE_TEST_SUITE_P(Shapes, NpyRoundTrip,
                         ::testing::Values(RoundTripCase{"f32_2d", DType::kFloat32, {3, 5}},
                                           RoundTripCase{"f64_4d", DType::kFloat64, {2, 3, 4, 5}},
                                           RoundTripCase{"bool_3d", DType::kBool, {2, 1, 7}},
                                           RoundTripCase{"f32_scalar", DType::kFloat32, {}},
                                           RoundTripCase{"f32_1d", DType::kFloat32, {17}},
                                           RoundTripCase{"f64_empty", DType::kFloat64, {0, 4}},
                                           RoundTripCase{"f16_2d", DType::kFloat16, {3, 5}},
                                           RoundTripCase{"bf16_3d", DType::kBFloat16, {2, 3, 4}}),
                         [](const ::testing::TestParamInfo<RoundTripCase>& p) {
                           return p.param.name;
                         });

TEST(NpyWrite, StridedViewIsWrittenInLogicalOrder) {
  // A 3x2 transposed view of a 2x3 row-major buffer.
  const float data[6] = {0, 1, 2, 3, 4, 5};
  const TensorView transposed(data, {3, 2}, {1, 3});
  const std::vector<std::byte> file = EncodeNpy(transposed);
  const Array array = ParseNpy(file.data(), file.size());
  EXPECT_EQ(array.shape(), (std::vector<std::int64_t>{3, 2}));
  const auto* values = reinterpret_cast<const float*>(array.data());
  const std::vector<float> expected = {0, 3, 1, 4, 2, 5};
  EXPECT_EQ(std::vector<float>(values, values + 6), expected);
}

TEST(NpyRead, HeaderVersions2And3) {
  for (int major : {2, 3}) {
    const Array array = Parse(MakeFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                                       FloatData({1.5f, -2}), major));
    EXPECT_EQ(array.shape(), std::vector<std::int64_t>{2}) << major;
    EXPECT_EQ(reinterpret_cast<const float*>(array.data())[1], -2.0f);
  }
}

TEST(NpyRead, LenientHeaderSpellings) {
  // Key order, double quotes, no trailing comma, Python 2 long suffix, '=' byte order.
  const Array array =
      Parse(MakeFile("{\"shape\": (1L, 2), \"fortran_order\": False, "
                     "\"descr\": \"=f4\"}",
                     FloatData({1, 2})));
  EXPECT_EQ(array.shape(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(array.type(), ElementType::kFloat32);
}

TEST(NpyRead, FortranOrderBecomesColumnMajorStrides) {
  // numpy.asfortranarray([[0, 1, 2], [3, 4, 5]]) stores 0 3 1 4 2 5.
  const Array array = Parse(MakeFile("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                     FloatData({0, 3, 1, 4, 2, 5})));
  EXPECT_TRUE(array.fortran_order());
  const TensorView view = array.view();
  ASSERT_EQ(view.rank(), 2);
  EXPECT_EQ(view.stride(0), 1);
  EXPECT_EQ(view.stride(1), 2);
  const auto* data = static_cast<const float*>(view.data);
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) EXPECT_EQ(data[i * view.stride(0) + j * view.stride(1)], i * 3 + j);
  }
  // Written back, it is C order with the same logical values.
  const std::vector<std::byte> file = EncodeNpy(view);
  const Array c_order = ParseNpy(file.data(), file.size());
  EXPECT_FALSE(c_order.fortran_order());
  const auto* values = reinterpret_cast<const float*>(c_order.data());
  EXPECT_EQ(std::vector<float>(values, values + 6), (std::vector<float>{0, 1, 2, 3, 4, 5}));
}

TEST(NpyRead, BoolBytesOtherThanZeroOrOneAreTrue) {
  const Array array = Parse(MakeFile("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }",
                                     std::string("\x00\x02\x01", 3)));
  const auto* values = reinterpret_cast<const unsigned char*>(array.data());
  EXPECT_EQ(values[0], 0);
  EXPECT_EQ(values[1], 1);
  EXPECT_EQ(values[2], 1);
}

TEST(NpyElementType, NamesAndSizes) {
  EXPECT_STREQ(ElementTypeName(ElementType::kInt32), "int32");
  EXPECT_STREQ(ElementTypeName(ElementType::kInt64), "int64");
  EXPECT_STREQ(ElementTypeName(ElementType::kBool), "bool");
  EXPECT_EQ(ElementBytes(ElementType::kInt32), 4u);
  EXPECT_EQ(ElementBytes(ElementType::kInt64), 8u);
  EXPECT_EQ(ElementBytes(ElementType::kFloat64), 8u);
  EXPECT_STREQ(ElementTypeName(ElementType::kFloat16), "float16");
  EXPECT_STREQ(ElementTypeName(ElementType::kBFloat16), "bfloat16");
  EXPECT_EQ(ElementBytes(ElementType::kFloat16), 2u);
  EXPECT_EQ(ElementBytes(ElementType::kBFloat16), 2u);
  EXPECT_EQ(ElementTypeOf(DType::kBFloat16), ElementType::kBFloat16);
  EXPECT_TRUE(IsInteger(ElementType::kInt64));
  EXPECT_FALSE(IsInteger(ElementType::kBool));
  EXPECT_EQ(ElementTypeOf(DType::kFloat64), ElementType::kFloat64);
}

// Integer arrays (cu_seqlens offsets): both widths, the extremes of each, read back as int64.
constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kInt64Min = std::numeric_limits<std::int64_t>::min();

struct IntegerCase {
  const char* name;
  std::string file;
  ElementType type;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> values;  // in C order
};

class NpyIntegers : public ::testing::TestWithParam<IntegerCase> {};

TEST_P(NpyIntegers, ReadsValuesInCOrder) {
  const IntegerCase& c = GetParam();
  const Array array = Parse(c.file);
  EXPECT_EQ(array.type(), c.type);
  EXPECT_EQ(array.shape(), c.shape);
  EXPECT_EQ(array.Integers(), c.values);
  // Integers are no attention operand: they have no TensorView.
  try {
    array.view();
    ADD_FAILURE() << "an integer array has a view";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find(std::string("dtype is ") + ElementTypeName(c.type)),
              std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Files, NpyIntegers,
    ::testing::Values(
        IntegerCase{"int32_1d",
                    MakeFile("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }",
                             IntData<std::int32_t>({0, 3, -1, 2147483647})),
                    ElementType::kInt32,
                    {4},
                    {0, 3, -1, 2147483647}},
        IntegerCase{"int32_min",
                    MakeFile("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                             IntData<std::int32_t>({-2147483647 - 1})),
                    ElementType::kInt32,
                    {1},
                    {-2147483648LL}},
        IntegerCase{"int64_1d",
                    MakeFile("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
                             IntData<std::int64_t>({0, 1099511627776, -5})),
                    ElementType::kInt64,
                    {3},
                    {0, 1099511627776, -5}},
        IntegerCase{"int64_extremes",
                    MakeFile("{'descr': '=i8', 'fortran_order': False, 'shape': (2,), }",
                             IntData<std::int64_t>({kInt64Max, kInt64Min})),
                    ElementType::kInt64,
                    {2},
                    {kInt64Max, kInt64Min}},
        // numpy.asfortranarray([[0, 1, 2], [3, 4, 5]]) stores 0 3 1 4 2 5.
        IntegerCase{"int32_fortran_2d",
                    MakeFile("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }",
                             IntData<std::int32_t>({0, 3, 1, 4, 2, 5})),
                    ElementType::kInt32,
                    {2, 3},
                    {0, 1, 2, 3, 4, 5}},
        IntegerCase{"int64_c_2d",
                    MakeFile("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }",
                             IntData<std::int64_t>({7, 8, 9, 10})),
                    ElementType::kInt64,
                    {2, 2},
                    {7, 8, 9, 10}},
        IntegerCase{"int64_scalar",
                    MakeFile("{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
                             IntData<std::int64_t>({42})),
                    ElementType::kInt64,
                    {},
                    {42}},
        IntegerCase{"int32_empty_huge_dims",
                    MakeFile("{'descr': '<i4', 'fortran_order': True, "
                             "'shape': (4611686018427387904, 0), }",
                             ""),
                    ElementType::kInt32,
                    {4611686018427387904LL, 0},
                    {}}),
    [](const ::testing::TestParamInfo<IntegerCase>& p) { return p.param.name; });

TEST(NpyRead, IntegersOfAFloatArrayThrow) {
  try {
    Parse(MakeFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", FloatData({1, 2})))
        .Integers();
    ADD_FAILURE();
  } catch (const NpyError& e) {
    EXPECT_STREQ(e.what(), "dtype is float32 but must be int32 or int64");
  }
}

TEST(NpyRead, TrailingBytesAreIgnoredLikeNumpy) {
  const Array array = Parse(
      MakeFile("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", FloatData({7, 8})));
  EXPECT_EQ(array.num_elements(), 1);
}

TEST(NpyRead, EmptyArrayWithHugeOtherDimensions) {
  const Array array = Parse(MakeFile(
      "{'descr': '<f4', 'fortran_order': True, 'shape': (0, 4611686018427387904, 8), }", ""));
  EXPECT_EQ(array.num_elements(), 0);
  EXPECT_NE(array.view().data, nullptr);
  const std::vector<std::byte> file = EncodeNpy(array.view());  // found by the fuzzer
  EXPECT_EQ(ParseNpy(file.data(), file.size()).shape(), array.shape());
}

TEST(NpyRead, RankAboveFourHasNoView) {
  const Array array = Parse(MakeFile(
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1), }", FloatData({1})));
  EXPECT_THROW(array.view(), NpyError);
}

struct MalformedCase {
  const char* name;
  std::string file;
  const char* message;
};

const std::string kGoodDict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";

class NpyMalformed : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(NpyMalformed, ThrowsNpyError) { ExpectError(GetParam().file, GetParam().message); }

std::string Dict(const std::string& descr, const std::string& fortran, const std::string& shape) {
  return "{'descr': " + descr + ", 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

INSTANTIATE_TEST_SUITE_P(
    Files, NpyMalformed,
    ::testing::Values(
        MalformedCase{"empty", "", "not a .npy file"},
        MalformedCase{"wrong_magic", "\x93NUMPX\x01\x00\x10\x00", "not a .npy file"},
        MalformedCase{"text_file", "hello, world\n", "not a .npy file"},
        MalformedCase{"only_magic", "\x93NUMPY", "truncated"},
        MalformedCase{"preamble_cut", std::string("\x93NUMPY\x02\x00\x10", 9), "truncated"},
        MalformedCase{"version_4", std::string("\x93NUMPY\x04\x00\x10\x00", 10),
                      "unsupported .npy format version 4.0"},
        MalformedCase{"version_1_1", std::string("\x93NUMPY\x01\x01\x10\x00", 10), "version 1.1"},
        MalformedCase{"header_too_long", std::string("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12),
                      "header length is 4294967295 bytes"},
        MalformedCase{"header_cut", MakeFile(kGoodDict, "").substr(0, 40), "truncated"},
        MalformedCase{"data_cut", MakeFile(kGoodDict, FloatData({1}) + "\x01"),
                      "data is truncated"},
        MalformedCase{"no_data", MakeFile(kGoodDict, ""), "8 bytes, but only 0 bytes follow"},
        MalformedCase{"absurd_shape",
                      MakeFile(Dict("'<f4'", "False", "(1000000000000, 1000000)"), "abcd"),
                      "data is truncated"},
        MalformedCase{"overflowing_shape",
                      MakeFile(Dict("'<f4'", "False", "(4294967296, 4294967296)"), ""),
                      "too many elements"},
        MalformedCase{"huge_integer",
                      MakeFile(Dict("'<f4'", "False", "(99999999999999999999999,)"), ""),
                      "does not fit in 64 bits"},
        MalformedCase{"negative_shape", MakeFile(Dict("'<f4'", "False", "(2, -3)"), ""),
                      "negative size -3"},
        MalformedCase{"float_shape", MakeFile(Dict("'<f4'", "False", "(2.5,)"), ""),
                      "malformed header"},
        MalformedCase{"shape_not_tuple", MakeFile(Dict("'<f4'", "False", "[2]"), ""),
                      "'shape' is not a tuple"},
        MalformedCase{"shape_parenthesized_int", MakeFile(Dict("'<f4'", "False", "(2)"), ""),
                      "'shape' is not a tuple"},
        MalformedCase{"rank_65",
                      MakeFile(Dict(
                                   "'<f4'", "False",
                                   "(" +
                                       [] {
                                         std::string s;
                                         for (int i = 0; i < 65; ++i) s += "1,";
                                         return s;
                                       }() +
                                       ")"),
                               ""),
                      "65 dimensions"},
        MalformedCase{"int16", MakeFile(Dict("'<i2'", "False", "(2,)"), "1234"),
                      "unsupported dtype '<i2'"},
        MalformedCase{"int8", MakeFile(Dict("'|i1'", "False", "(2,)"), "12"),
                      "unsupported dtype '|i1'"},
        MalformedCase{"uint32", MakeFile(Dict("'<u4'", "False", "(2,)"), "12345678"),
                      "unsupported dtype '<u4'"},
        MalformedCase{"uint64", MakeFile(Dict("'<u8'", "False", "(1,)"), "12345678"),
                      "unsupported dtype '<u8'"},
        MalformedCase{"int32_no_byte_order", MakeFile(Dict("'|i4'", "False", "(2,)"), "12345678"),
                      "unsupported dtype '|i4'"},
        MalformedCase{"int32_big_endian", MakeFile(Dict("'>i4'", "False", "(2,)"), "12345678"),
                      "'>i4': byte order"},
        MalformedCase{"int64_big_endian", MakeFile(Dict("'>i8'", "False", "(1,)"), "12345678"),
                      "'>i8': byte order"},
        MalformedCase{"int32_data_cut", MakeFile(Dict("'<i4'", "False", "(3,)"), "12345678"),
                      "shape (3,) of int32, 12 bytes, but only 8 bytes follow"},
        MalformedCase{"int64_data_cut", MakeFile(Dict("'<i8'", "False", "(2, 2)"), "12345678"),
                      "shape (2, 2) of int64, 32 bytes, but only 8 bytes follow"},
        MalformedCase{"int64_overflowing_shape",
                      MakeFile(Dict("'<i8'", "False", "(2305843009213693952, 2)"), ""),
                      "too many elements"},
        MalformedCase{"int64_negative_shape", MakeFile(Dict("'<i8'", "False", "(-1,)"), ""),
                      "negative size -1"},
        MalformedCase{"big_endian", MakeFile(Dict("'>f4'", "False", "(2,)"), "12345678"),
                      "byte order"},
        MalformedCase{"complex", MakeFile(Dict("'<c8'", "False", "(2,)"), "1234567812345678"),
                      "unsupported dtype '<c8'"},
        MalformedCase{"float16_big_endian", MakeFile(Dict("'>f2'", "False", "(2,)"), "1234"),
                      "'>f2': byte order"},
        MalformedCase{"void_of_4_bytes", MakeFile(Dict("'|V4'", "False", "(2,)"), "12345678"),
                      "unsupported dtype '|V4'"},
        MalformedCase{"bfloat16_big_endian", MakeFile(Dict("'>V2'", "False", "(2,)"), "1234"),
                      "unsupported dtype '>V2'"},
        MalformedCase{"object", MakeFile(Dict("'|O'", "False", "(2,)"), "1234"),
                      "unsupported dtype '|O'"},
        MalformedCase{"structured", MakeFile(Dict("[('a', '<f4')]", "False", "(2,)"), "12345678"),
                      "structured"},
        MalformedCase{"fortran_not_bool", MakeFile(Dict("'<f4'", "0", "(2,)"), "12345678"),
                      "'fortran_order' is not True or False"},
        MalformedCase{"header_not_dict", MakeFile("[1, 2, 3]", ""), "not a dict"},
        MalformedCase{"header_garbage", MakeFile("\x01\x02\x03", ""), "malformed header"},
        MalformedCase{"missing_key", MakeFile("{'descr': '<f4', 'shape': (2,)}", "12345678"),
                      "no 'fortran_order' key"},
        MalformedCase{
            "extra_key",
            MakeFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "12345678"),
            "unexpected key 'x'"},
        MalformedCase{"repeated_key",
                      MakeFile("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                               "'shape': (2,)}",
                               "12345678"),
                      "repeated"},
        MalformedCase{"non_string_key", MakeFile("{1: 2}", ""), "dict key is not a string"},
        MalformedCase{"unterminated_string", MakeFile("{'descr", ""), "string at offset"},
        MalformedCase{"unclosed_dict", MakeFile("{'descr': '<f4'", ""), "expected '}'"},
        MalformedCase{"text_after_dict", MakeFile(kGoodDict + " 1", "12345678"),
                      "unexpected text after the dict"},
        MalformedCase{"nesting_bomb", MakeFile(std::string(500, '(') + std::string(500, ')'), ""),
                      "nesting too deep"}),
    [](const ::testing::TestParamInfo<MalformedCase>& p) { return p.param.name; });

// bfloat16 as numpy with ml_dtypes writes it ('<V2'; '|V2' also means a 2-byte void), float16
// as '<f2'; both give 16-bit tensor views. Other void widths are not bfloat16.
TEST(NpyRead, SixteenBitFloats) {
  const std::string two("\x80\x3f\x00\xc0", 4);  // bfloat16 1.0, -2.0
  for (const char* descr : {"'<V2'", "'|V2'"}) {
    const Array array = Parse(MakeFile(Dict(descr, "False", "(2,)"), two));
    EXPECT_EQ(array.type(), ElementType::kBFloat16) << descr;
    const TensorView view = array.view();
    ASSERT_EQ(view.dtype, DType::kBFloat16);
    EXPECT_EQ(ToFloat(static_cast<const bfloat16*>(view.data)[0]), 1.0f);
    EXPECT_EQ(ToFloat(static_cast<const bfloat16*>(view.data)[1]), -2.0f);
  }
  const Array half =
      Parse(MakeFile(Dict("'<f2'", "False", "(2,)"), std::string("\x00\x3c\x00\xc0", 4)));
  ASSERT_EQ(half.view().dtype, DType::kFloat16);
  EXPECT_EQ(ToFloat(static_cast<const float16*>(half.view().data)[0]), 1.0f);
  EXPECT_EQ(ToFloat(static_cast<const float16*>(half.view().data)[1]), -2.0f);
}

class NpyReadFile : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "npy_test_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".npy";
  }
  void TearDown() override { std::remove(path_.c_str()); }
  void Write(const std::string& content) { std::ofstream(path_, std::ios::binary) << content; }
  std::string path_;
};

TEST_F(NpyReadFile, ReadsAFile) {
  Write(MakeFile(kGoodDict, FloatData({1, 2})));
  const Array array = ReadNpy(path_);
  EXPECT_EQ(reinterpret_cast<const float*>(array.data())[1], 2.0f);
}

TEST_F(NpyReadFile, ReadsAnIntegerFile) {
  Write(MakeFile("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
                 IntData<std::int64_t>({0, 5, 12})));
  const Array array = ReadNpy(path_);
  EXPECT_EQ(array.type(), ElementType::kInt64);
  EXPECT_EQ(array.Integers(), (std::vector<std::int64_t>{0, 5, 12}));
}

TEST_F(NpyReadFile, TruncatedIntegerData) {
  Write(MakeFile("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
                 IntData<std::int32_t>({0, 5})));
  try {
    ReadNpy(path_);
    ADD_FAILURE();
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("of int32, 12 bytes, but only 8 bytes follow"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(NpyReadFile, MissingFile) {
  try {
    ReadNpy(path_ + ".missing");
    ADD_FAILURE();
  } catch (const NpyError& e) {
    EXPECT_STREQ(e.what(), "cannot open: No such file or directory");
  }
}

TEST_F(NpyReadFile, Directory) { EXPECT_THROW(ReadNpy(::testing::TempDir()), NpyError); }

TEST_F(NpyReadFile, AbsurdShapeIsRejectedBeforeAllocating) {
  // 2^40 float32 elements (4 TiB) claimed by a file of 128 bytes: the size check must come first.
  Write(MakeFile(Dict("'<f4'", "False", "(1099511627776,)"), "abcd"));
  try {
    ReadNpy(path_);
    ADD_FAILURE();
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("4398046511104 bytes, but only 4 bytes"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(NpyReadFile, TruncatedData) {
  Write(MakeFile(kGoodDict, FloatData({1})));
  EXPECT_THROW(ReadNpy(path_), NpyError);
}

// Every file of the fuzzer's seed corpus (tests/fuzz/corpus/npy/): valid_* parse and survive a
// round trip, invalid_* throw NpyError, regression_* (inputs the fuzzer once failed on) do
// either without crashing.
TEST(NpyCorpus, SeedFilesBehave) {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(SDPA_NPY_CORPUS_DIR)) {
    const std::string name = entry.path().filename().string();
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string content((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    ++files;
    if (name.rfind("invalid_", 0) == 0) {
      EXPECT_THROW(Parse(content), NpyError) << name;
      continue;
    }
    try {
      const Array array = Parse(content);
      if (IsInteger(array.type())) {
        EXPECT_EQ(static_cast<std::int64_t>(array.Integers().size()), array.num_elements()) << name;
      } else if (array.shape().size() <= 4) {
        const std::vector<std::byte> again = EncodeNpy(array.view());
        EXPECT_EQ(ParseNpy(again.data(), again.size()).shape(), array.shape()) << name;
      }
    } catch (const NpyError& e) {
      EXPECT_EQ(name.rfind("valid_", 0), std::string::npos) << name << ": " << e.what();
    }
  }
  EXPECT_GE(files, 10);
}

}  // namespace
}  // namespace sdpa::npy
