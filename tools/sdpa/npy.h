// Reading and writing numpy's .npy files: the tensors `sdpa run` takes and returns.
//
// Format (numpy/lib/format.py, NEP 1): the magic "\x93NUMPY", a major and minor version byte,
// the header length (uint16 LE in version 1.0, uint32 LE in 2.0 and 3.0), then the header: a
// Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces to a multiple of 64 bytes and ended by '\n' (latin-1 in 1.0/2.0, UTF-8 in
// 3.0), then the raw elements in C (row-major) or Fortran (column-major) order.
//
// What is supported: little-endian float32 ('<f4'), float64 ('<f8'), float16 ('<f2'),
// bfloat16 ('<V2' or '|V2', see below), bool ('|b1'), and int32 ('<i4') and int64 ('<i8') for
// index arrays such as cu_seqlens; any rank up to 64, C or Fortran order. Everything else
// (big-endian, other integer widths, unsigned, complex, structured dtypes, object arrays) is
// rejected with an NpyError naming what was found.
//
// bfloat16: numpy has no bfloat16 type code, so np.save of an ml_dtypes.bfloat16 array writes
// the descr '<V2' (a 2-byte opaque "void" element; np.load gives a V2 array that
// `.view(ml_dtypes.bfloat16)` turns back). A 2-byte void element is read as bfloat16, the only
// such type numpy writes for tensors; bfloat16 files are written with '<V2' as well.
//
// Untrusted input: the reader never allocates more than the file holds. The header is at most
// kMaxHeaderBytes, the element count must fit in int64 and the data bytes the header claims must
// be present in the file before the buffer is allocated; bool bytes other than 0/1 are read as
// true (never as an invalid C++ bool).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "sdpa/tensor.h"

namespace sdpa::npy {

// Any problem with a .npy file. The message is one line and does not start with "sdpa: "; the
// caller adds the file name and the prefix.
class NpyError : public std::runtime_error {
 public:
  explicit NpyError(const std::string& message) : std::runtime_error(message) {}
};

// numpy rejects headers larger than this by default (max_header_size); so do we.
inline constexpr std::size_t kMaxHeaderBytes = 10000;
// numpy's NPY_MAXDIMS.
inline constexpr int kMaxNpyRank = 64;

// What a file's elements are: the library's tensor dtypes, plus the integers of index arrays
// (which have no TensorView; Array::Integers reads them).
enum class ElementType : std::uint8_t {
  kFloat32,
  kFloat64,
  kBool,
  kInt32,
  kInt64,
  kFloat16,
  kBFloat16,
};

// "float32", "float64", "bool", "int32", "int64", "float16", "bfloat16".
const char* ElementTypeName(ElementType type);
// Size of one element in bytes.
std::size_t ElementBytes(ElementType type);
// The element type that stores `dtype`.
ElementType ElementTypeOf(DType dtype);
bool IsInteger(ElementType type);

// What the header says.
struct Header {
  ElementType type = ElementType::kFloat32;
  std::vector<std::int64_t> shape;  // every entry >= 0
  bool fortran_order = false;
  std::int64_t num_elements = 1;  // product of shape, checked to fit
  std::size_t data_offset = 0;    // bytes from the start of the file to the first element
  std::uint64_t data_bytes = 0;   // num_elements * element size, checked to fit
};

// Parses the preamble and header at the start of `bytes` (which may be the whole file or just
// its first bytes). Throws NpyError if they are malformed or truncated, or the dtype is
// unsupported. Does not look at the data.
Header ParseHeader(const std::byte* bytes, std::size_t size);

// An array read from a .npy file: owns its elements in file order.
class Array {
 public:
  Array() = default;
  Array(const Header& header, std::unique_ptr<std::byte[]> data);

  ElementType type() const { return header_.type; }
  const std::vector<std::int64_t>& shape() const { return header_.shape; }
  bool fortran_order() const { return header_.fortran_order; }
  std::int64_t num_elements() const { return header_.num_elements; }
  const std::byte* data() const { return data_.get(); }

  // The elements as a view in the array's logical index order, without copying: C-ordered
  // arrays get row-major strides, Fortran-ordered arrays column-major ones. Throws NpyError if
  // the rank is above sdpa::kMaxRank or the elements are integers.
  TensorView view() const;

  // The elements of an int32 or int64 array as int64, in C (row-major) index order whatever the
  // file's order. Throws NpyError for any other element type.
  std::vector<std::int64_t> Integers() const;

 private:
  Header header_;
  std::unique_ptr<std::byte[]> data_;
};

// Parses a whole .npy file held in memory (used by the fuzzer and the tests). Trailing bytes
// after the data are ignored, as numpy.load does.
Array ParseNpy(const std::byte* bytes, std::size_t size);

// Reads a .npy file. Throws NpyError (not found, unreadable, malformed, unsupported) with a
// message that does not include the path.
Array ReadNpy(const std::string& path);

// The preamble and header (version 1.0) of a C-ordered array, padded to 64 bytes.
std::string EncodeHeader(DType dtype, const std::vector<std::int64_t>& shape);

// Writes `view` (any strides, rank <= 4) as a C-ordered .npy file, in pieces handed to `sink`
// (header first, then one row of the last dimension at a time), so that a large output is
// never copied whole.
void WriteNpy(const TensorView& view, const std::function<void(const void*, std::size_t)>& sink);

// The complete .npy file for `view`, in memory (tests and the fuzzer).
std::vector<std::byte> EncodeNpy(const TensorView& view);

}  // namespace sdpa::npy
