#include "npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

namespace sdpa::npy {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicBytes = 6;
constexpr std::int64_t kMaxInt64 = std::numeric_limits<std::int64_t>::max();

static_assert(sizeof(bool) == 1, ".npy bools are one byte");

bool HostIsLittleEndian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// Printable form of untrusted header text for messages: at most 40 characters, non-printable
// bytes as '?', so that the message stays one line.
std::string Excerpt(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (out.size() == 40) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

// The header is a Python literal. This parses the subset numpy writes (dicts with string keys,
// tuples, lists, strings, integers, True/False/None) with a depth limit, so hostile input cannot
// overflow the stack.
struct Value {
  enum class Kind { kDict, kTuple, kList, kString, kInt, kBool, kNone };
  Kind kind = Kind::kNone;
  std::string text;               // kString
  std::int64_t integer = 0;       // kInt (saturated; `overflow` says so)
  bool overflow = false;          // kInt did not fit in int64
  bool boolean = false;           // kBool
  std::vector<std::string> keys;  // kDict, same length as items
  std::vector<Value> items;       // kDict values, kTuple and kList elements
};

class LiteralParser {
 public:
  explicit LiteralParser(const std::string& text) : text_(text) {}

  Value ParseDocument() {
    Value value = ParseValue(0);
    SkipSpace();
    if (pos_ != text_.size()) Fail("unexpected text after the dict");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 16;

  [[noreturn]] void Fail(const std::string& what) const {
    throw NpyError("malformed header: " + what + " at offset " + std::to_string(pos_) + " in '" +
                   Excerpt(text_) + "'");
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < text_.size() && text_[pos_] == c;
  }
  void Expect(char c) {
    if (!Peek(c)) Fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool StartsWith(const char* word) const {
    return text_.compare(pos_, std::strlen(word), word) == 0;
  }

  Value ParseValue(int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) Fail("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return ParseDict(depth);
    if (c == '(') return ParseSequence(depth, ')', Value::Kind::kTuple);
    if (c == '[') return ParseSequence(depth, ']', Value::Kind::kList);
    if (c == '\'' || c == '"') return ParseString();
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) return ParseInt();
    Value value;
    if (StartsWith("True")) {
      pos_ += 4;
      value.kind = Value::Kind::kBool;
      value.boolean = true;
    } else if (StartsWith("False")) {
      pos_ += 5;
      value.kind = Value::Kind::kBool;
    } else if (StartsWith("None")) {
      pos_ += 4;
    } else {
      Fail("unexpected character");
    }
    return value;
  }

  Value ParseDict(int depth) {
    Value dict;
    dict.kind = Value::Kind::kDict;
    Expect('{');
    while (!Peek('}')) {
      const Value key = ParseValue(depth + 1);
      if (key.kind != Value::Kind::kString) Fail("dict key is not a string");
      Expect(':');
      dict.keys.push_back(key.text);
      dict.items.push_back(ParseValue(depth + 1));
      if (!Peek(',')) break;
      ++pos_;
    }
    Expect('}');
    return dict;
  }

  // `(x)` without a comma is x itself, as in Python; `(x,)` and `()` are tuples.
  Value ParseSequence(int depth, char close, Value::Kind kind) {
    Value seq;
    seq.kind = kind;
    ++pos_;  // the opening bracket
    bool saw_comma = false;
    while (!Peek(close)) {
      seq.items.push_back(ParseValue(depth + 1));
      if (!Peek(',')) break;
      ++pos_;
      saw_comma = true;
    }
    Expect(close);
    if (kind == Value::Kind::kTuple && seq.items.size() == 1 && !saw_comma) {
      return std::move(seq.items[0]);
    }
    return seq;
  }

  Value ParseString() {
    Value value;
    value.kind = Value::Kind::kString;
    const char quote = text_[pos_++];
    while (true) {
      if (pos_ >= text_.size()) Fail("unterminated string");
      char c = text_[pos_++];
      if (c == quote) break;
      if (c == '\n') Fail("newline in string");
      if (c == '\\') {
        if (pos_ >= text_.size()) Fail("unterminated string");
        c = text_[pos_++];
      }
      value.text += c;
    }
    return value;
  }

  // Decimal integers; a trailing 'L' (Python 2 longs, in files written by old numpy) is allowed.
  Value ParseInt() {
    Value value;
    value.kind = Value::Kind::kInt;
    bool negative = false;
    if (text_[pos_] == '-' || text_[pos_] == '+') negative = text_[pos_++] == '-';
    const std::size_t start = pos_;
    std::uint64_t magnitude = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const auto digit = static_cast<std::uint64_t>(text_[pos_++] - '0');
      if (magnitude > (static_cast<std::uint64_t>(kMaxInt64) - digit) / 10) {
        value.overflow = true;
      } else {
        magnitude = magnitude * 10 + digit;
      }
    }
    if (pos_ == start) Fail("expected a digit");
    if (pos_ < text_.size() && (text_[pos_] == 'L' || text_[pos_] == 'l')) ++pos_;
    const auto signed_magnitude = static_cast<std::int64_t>(magnitude);
    value.integer = negative ? -signed_magnitude : signed_magnitude;
    return value;
  }

  const std::string& text_;
  std::size_t pos_ = 0;
};

std::uint32_t ReadLittleEndian(const std::byte* bytes, int count) {
  std::uint32_t value = 0;
  for (int i = count - 1; i >= 0; --i) {
    value = (value << 8) | static_cast<std::uint32_t>(bytes[i]);
  }
  return value;
}

// '<f4' -> float32 and so on; anything else throws, naming what it found.
ElementType ParseDescr(const Value& descr) {
  if (descr.kind != Value::Kind::kString) {
    throw NpyError(
        "unsupported dtype: structured or non-string 'descr' (only float32, float64, float16, "
        "bfloat16, bool, int32 and int64 arrays are supported)");
  }
  const std::string& s = descr.text;
  const char native = HostIsLittleEndian() ? '<' : '>';
  const char foreign = HostIsLittleEndian() ? '>' : '<';
  const std::string body =
      (!s.empty() && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=')) ? s.substr(1) : s;
  const char order = body.size() < s.size() ? s[0] : '|';
  if (body == "b1") return ElementType::kBool;  // one byte: any byte order mark means the same
  // ml_dtypes.bfloat16 as np.save writes it ('<V2', see npy.h); '|' (no byte order) too.
  if (body == "V2" && (order == '<' || order == '|') && HostIsLittleEndian()) {
    return ElementType::kBFloat16;
  }
  if (body == "f2" || body == "f4" || body == "f8" || body == "i4" || body == "i8") {
    if (order == foreign) {
      throw NpyError("unsupported dtype '" + Excerpt(s) +
                     "': byte order is not the machine's; convert with "
                     "arr.astype(arr.dtype.newbyteorder('=')) first");
    }
    if (order == native || order == '=') {
      return body == "f2"   ? ElementType::kFloat16
             : body == "f4" ? ElementType::kFloat32
             : body == "f8" ? ElementType::kFloat64
             : body == "i4" ? ElementType::kInt32
                            : ElementType::kInt64;
    }
  }
  throw NpyError("unsupported dtype '" + Excerpt(s) +
                 "' (supported: float32 '<f4', float64 '<f8', float16 '<f2', bfloat16 '<V2' "
                 "(ml_dtypes), bool '|b1', int32 '<i4', int64 '<i8')");
}

const Value& Lookup(const Value& dict, const char* key) {
  for (std::size_t i = 0; i < dict.keys.size(); ++i) {
    if (dict.keys[i] == key) return dict.items[i];
  }
  throw NpyError(std::string("malformed header: the dict has no '") + key + "' key");
}

void NormalizeBools(std::byte* data, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    data[i] = data[i] != std::byte{0} ? std::byte{1} : std::byte{0};
  }
}

std::string TruncatedDataMessage(const Header& header, std::uint64_t available) {
  return "data is truncated: the header says shape " + ShapeString(header.shape) + " of " +
         ElementTypeName(header.type) + ", " + std::to_string(header.data_bytes) +
         " bytes, but only " + std::to_string(available) + " bytes follow the header";
}

}  // namespace

// Local versions of sdpa::DTypeName/DTypeSize: this unit uses only the library's headers, so the
// fuzzer builds it without building the library.
const char* ElementTypeName(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return "float32";
    case ElementType::kFloat64:
      return "float64";
    case ElementType::kBool:
      return "bool";
    case ElementType::kInt32:
      return "int32";
    case ElementType::kInt64:
      return "int64";
    case ElementType::kFloat16:
      return "float16";
    case ElementType::kBFloat16:
      return "bfloat16";
  }
  return "?";
}

std::size_t ElementBytes(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
    case ElementType::kInt32:
      return 4;
    case ElementType::kFloat64:
    case ElementType::kInt64:
      return 8;
    case ElementType::kFloat16:
    case ElementType::kBFloat16:
      return 2;
    case ElementType::kBool:
      return sizeof(bool);
  }
  return 1;
}

ElementType ElementTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return ElementType::kFloat32;
    case DType::kFloat64:
      return ElementType::kFloat64;
    case DType::kFloat16:
      return ElementType::kFloat16;
    case DType::kBFloat16:
      return ElementType::kBFloat16;
    case DType::kInt32:
      return ElementType::kInt32;
    case DType::kBool:
    case DType::kInt8:  // no tensor of the tool is int8
      break;
  }
  return ElementType::kBool;
}

namespace {
DType TensorDTypeOf(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return DType::kFloat32;
    case ElementType::kFloat64:
      return DType::kFloat64;
    case ElementType::kFloat16:
      return DType::kFloat16;
    case ElementType::kBFloat16:
      return DType::kBFloat16;
    default:
      return DType::kBool;
  }
}

const char* DescrOf(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "<f4";
    case DType::kFloat64:
      return "<f8";
    case DType::kFloat16:
      return "<f2";
    case DType::kBFloat16:
      return "<V2";  // what np.save writes for ml_dtypes.bfloat16 (npy.h)
    default:
      return "|b1";
  }
}
}  // namespace

bool IsInteger(ElementType type) {
  return type == ElementType::kInt32 || type == ElementType::kInt64;
}

Header ParseHeader(const std::byte* bytes, std::size_t size) {
  // Preamble: magic (6), major (1), minor (1), header length (2 in 1.0, 4 in 2.0/3.0).
  if (size < kMagicBytes || std::memcmp(bytes, kMagic, kMagicBytes) != 0) {
    throw NpyError(size < kMagicBytes
                       ? "not a .npy file: it is " + std::to_string(size) + " bytes long"
                       : std::string("not a .npy file: it does not start with \"\\x93NUMPY\""));
  }
  if (size < kMagicBytes + 2) throw NpyError("truncated: the file ends inside the preamble");
  const auto major = static_cast<int>(bytes[6]);
  const auto minor = static_cast<int>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    throw NpyError("unsupported .npy format version " + std::to_string(major) + "." +
                   std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
  }
  const int length_bytes = major == 1 ? 2 : 4;
  const std::size_t prefix = kMagicBytes + 2 + static_cast<std::size_t>(length_bytes);
  if (size < prefix) throw NpyError("truncated: the file ends inside the preamble");
  const std::uint32_t header_len = ReadLittleEndian(bytes + 8, length_bytes);
  if (header_len > kMaxHeaderBytes) {
    throw NpyError("header length is " + std::to_string(header_len) + " bytes, more than the " +
                   std::to_string(kMaxHeaderBytes) + " allowed");
  }
  if (size - prefix < header_len) {
    throw NpyError("truncated: the header is " + std::to_string(header_len) +
                   " bytes but the file ends after " + std::to_string(size - prefix));
  }
  const std::string text(reinterpret_cast<const char*>(bytes + prefix), header_len);

  const Value dict = LiteralParser(text).ParseDocument();
  if (dict.kind != Value::Kind::kDict) throw NpyError("malformed header: it is not a dict");
  for (std::size_t i = 0; i < dict.keys.size(); ++i) {
    const std::string& key = dict.keys[i];
    if (key != "descr" && key != "fortran_order" && key != "shape") {
      throw NpyError("malformed header: unexpected key '" + Excerpt(key) + "'");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (dict.keys[j] == key) throw NpyError("malformed header: key '" + key + "' repeated");
    }
  }

  Header header;
  header.type = ParseDescr(Lookup(dict, "descr"));
  const Value& fortran = Lookup(dict, "fortran_order");
  if (fortran.kind != Value::Kind::kBool) {
    throw NpyError("malformed header: 'fortran_order' is not True or False");
  }
  header.fortran_order = fortran.boolean;

  const Value& shape = Lookup(dict, "shape");
  if (shape.kind != Value::Kind::kTuple) {
    throw NpyError("malformed header: 'shape' is not a tuple");
  }
  if (shape.items.size() > static_cast<std::size_t>(kMaxNpyRank)) {
    throw NpyError("shape has " + std::to_string(shape.items.size()) + " dimensions, more than " +
                   std::to_string(kMaxNpyRank));
  }
  for (const Value& dim : shape.items) {
    if (dim.kind != Value::Kind::kInt) {
      throw NpyError("malformed header: 'shape' holds something other than integers");
    }
    if (dim.integer < 0) {
      throw NpyError("malformed header: 'shape' has the negative size " +
                     std::to_string(dim.integer));
    }
    if (dim.overflow) throw NpyError("shape has a size that does not fit in 64 bits");
    header.shape.push_back(dim.integer);
  }
  // Elements and bytes must fit before anyone multiplies them; a zero anywhere makes the
  // array empty whatever the other sizes are.
  bool empty = false;
  for (std::int64_t dim : header.shape) empty = empty || dim == 0;
  header.num_elements = empty ? 0 : 1;
  const auto item_bytes = static_cast<std::int64_t>(ElementBytes(header.type));
  for (std::int64_t dim : header.shape) {
    if (empty) break;
    if (header.num_elements > kMaxInt64 / item_bytes / dim) {
      throw NpyError("shape " + ShapeString(header.shape) + " has too many elements");
    }
    header.num_elements *= dim;
  }
  header.data_bytes =
      static_cast<std::uint64_t>(header.num_elements) * static_cast<std::uint64_t>(item_bytes);
  header.data_offset = prefix + header_len;
  return header;
}

Array::Array(const Header& header, std::unique_ptr<std::byte[]> data)
    : header_(header), data_(std::move(data)) {}

TensorView Array::view() const {
  if (IsInteger(header_.type)) {
    throw NpyError(std::string("dtype is ") + ElementTypeName(header_.type) +
                   ", which has no tensor view (float32, float64, float16, bfloat16 or bool)");
  }
  const auto rank = static_cast<int>(header_.shape.size());
  if (rank > kMaxRank) {
    throw NpyError("shape " + ShapeString(header_.shape) + " has rank " + std::to_string(rank) +
                   " but at most " + std::to_string(kMaxRank) + " is supported");
  }
  // Strides in elements: row-major for C order, column-major (first index fastest) for Fortran
  // order. The sizes multiply to num_elements, which fits; an empty array gets stride 1 per
  // dimension instead of products that could overflow.
  Layout layout;
  layout.rank = rank;
  std::int64_t stride = 1;
  for (int i = 0; i < rank; ++i) {
    const int d = header_.fortran_order ? i : rank - 1 - i;
    layout.shape[d] = header_.shape[static_cast<std::size_t>(d)];
    layout.strides[d] = stride;
    if (header_.num_elements > 0) stride *= layout.shape[d];
  }
  return TensorView(data_.get(), TensorDTypeOf(header_.type), layout);
}

std::vector<std::int64_t> Array::Integers() const {
  if (!IsInteger(header_.type)) {
    throw NpyError(std::string("dtype is ") + ElementTypeName(header_.type) +
                   " but must be int32 or int64");
  }
  // An empty array has no elements, whatever its other sizes (which may multiply past int64).
  if (header_.num_elements == 0) return {};
  // Element n in C order is at file position Σ index[d]·stride[d], with strides row-major in C
  // order and column-major in Fortran order (as in view()), walked by an odometer. The strides
  // are products of sizes, at most num_elements.
  const std::size_t rank = header_.shape.size();
  std::vector<std::int64_t> strides(rank, 1);
  for (std::size_t i = 1; i < rank; ++i) {
    if (header_.fortran_order) {
      strides[i] = strides[i - 1] * header_.shape[i - 1];
    } else {
      strides[rank - 1 - i] = strides[rank - i] * header_.shape[rank - i];
    }
  }
  std::vector<std::int64_t> values(static_cast<std::size_t>(header_.num_elements));
  std::vector<std::int64_t> index(rank, 0);
  const std::size_t item = ElementBytes(header_.type);
  for (std::int64_t& value : values) {
    std::int64_t position = 0;
    for (std::size_t d = 0; d < rank; ++d) position += index[d] * strides[d];
    const std::byte* element = data_.get() + static_cast<std::size_t>(position) * item;
    if (header_.type == ElementType::kInt32) {
      std::int32_t narrow = 0;
      std::memcpy(&narrow, element, sizeof(narrow));
      value = narrow;
    } else {
      std::memcpy(&value, element, sizeof(value));
    }
    for (std::size_t d = rank; d-- > 0;) {
      if (++index[d] < header_.shape[d]) break;
      index[d] = 0;
    }
  }
  return values;
}

Array ParseNpy(const std::byte* bytes, std::size_t size) {
  const Header header = ParseHeader(bytes, size);
  const std::uint64_t available = size - header.data_offset;
  if (available < header.data_bytes) throw NpyError(TruncatedDataMessage(header, available));
  // At least one byte, so that even an empty array has a non-null data pointer.
  std::unique_ptr<std::byte[]> data(new std::byte[header.data_bytes + 1]);
  std::memcpy(data.get(), bytes + header.data_offset, header.data_bytes);
  if (header.type == ElementType::kBool) NormalizeBools(data.get(), header.data_bytes);
  return Array(header, std::move(data));
}

Array ReadNpy(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw NpyError(std::string("cannot open: ") + std::strerror(errno));
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(file, &std::fclose);
  struct stat info {};
  if (fstat(fileno(file), &info) != 0) {
    throw NpyError(std::string("cannot stat: ") + std::strerror(errno));
  }
  if (S_ISDIR(info.st_mode)) throw NpyError("is a directory");
  if (!S_ISREG(info.st_mode)) throw NpyError("is not a regular file");
  const auto file_size = static_cast<std::uint64_t>(info.st_size);

  // The header is bounded, so this read is too.
  std::vector<std::byte> head(12 + kMaxHeaderBytes);
  const std::size_t head_size = std::fread(head.data(), 1, head.size(), file);
  if (std::ferror(file)) throw NpyError(std::string("cannot read: ") + std::strerror(errno));
  const Header header = ParseHeader(head.data(), head_size);

  // Check the claim against the file before allocating for it.
  const std::uint64_t available =
      file_size > header.data_offset ? file_size - header.data_offset : 0;
  if (available < header.data_bytes) throw NpyError(TruncatedDataMessage(header, available));
  if (header.data_bytes > std::numeric_limits<std::size_t>::max() - 1) {
    throw NpyError("data of " + std::to_string(header.data_bytes) + " bytes is too large");
  }
  const auto data_bytes = static_cast<std::size_t>(header.data_bytes);
  std::unique_ptr<std::byte[]> data(new std::byte[data_bytes + 1]);
  if (std::fseek(file, static_cast<long>(header.data_offset), SEEK_SET) != 0) {
    throw NpyError(std::string("cannot seek: ") + std::strerror(errno));
  }
  const std::size_t got = std::fread(data.get(), 1, data_bytes, file);
  if (got != data_bytes) {
    // The file shrank while we read it.
    throw NpyError(TruncatedDataMessage(header, got));
  }
  if (header.type == ElementType::kBool) NormalizeBools(data.get(), header.data_bytes);
  return Array(header, std::move(data));
}

std::string EncodeHeader(DType dtype, const std::vector<std::int64_t>& shape) {
  const char* descr = DescrOf(dtype);
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': False, 'shape': " + ShapeString(shape) + ", }";
  // Pad with spaces so that preamble + header is a multiple of 64 bytes, then end with '\n'.
  const std::size_t prefix = kMagicBytes + 4;
  const std::size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';
  std::string preamble(kMagic, kMagicBytes);
  preamble += '\x01';
  preamble += '\x00';
  preamble += static_cast<char>(dict.size() & 0xff);
  preamble += static_cast<char>(dict.size() >> 8);
  return preamble + dict;
}

void WriteNpy(const TensorView& view, const std::function<void(const void*, std::size_t)>& sink) {
  if (view.dtype != DType::kBool && !HostIsLittleEndian()) {
    throw NpyError("writing .npy files on a big-endian machine is not supported");
  }
  const int rank = view.rank();
  std::vector<std::int64_t> shape(view.layout.shape, view.layout.shape + rank);
  const std::string header = EncodeHeader(view.dtype, shape);
  sink(header.data(), header.size());
  // An empty array has no data, whatever its other sizes (which may multiply past int64).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return;
  std::int64_t count = 1;
  for (std::int64_t dim : shape) count *= dim;  // fits: the caller holds that many elements

  // Row by row along the last dimension (one memcpy when a row is contiguous), odometer over
  // the others; rank 0 is a single element.
  const std::size_t item = ElementBytes(ElementTypeOf(view.dtype));
  const std::int64_t row_len = rank > 0 ? shape[static_cast<std::size_t>(rank - 1)] : 1;
  const std::int64_t row_stride = rank > 0 ? view.stride(rank - 1) : 1;
  const auto* base = static_cast<const char*>(view.data);
  std::vector<char> row(static_cast<std::size_t>(row_len) * item);
  std::vector<std::int64_t> index(static_cast<std::size_t>(rank > 0 ? rank - 1 : 0), 0);
  for (std::int64_t done = 0; done < count; done += row_len) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < index.size(); ++d) {
      offset += index[d] * view.stride(static_cast<int>(d));
    }
    if (row_stride == 1) {
      std::memcpy(row.data(), base + offset * static_cast<std::int64_t>(item), row.size());
    } else {
      for (std::int64_t j = 0; j < row_len; ++j) {
        std::memcpy(row.data() + static_cast<std::size_t>(j) * item,
                    base + (offset + j * row_stride) * static_cast<std::int64_t>(item), item);
      }
    }
    sink(row.data(), row.size());
    for (std::size_t d = index.size(); d-- > 0;) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
}

std::vector<std::byte> EncodeNpy(const TensorView& view) {
  std::vector<std::byte> bytes;
  WriteNpy(view, [&bytes](const void* data, std::size_t size) {
    const auto* begin = static_cast<const std::byte*>(data);
    bytes.insert(bytes.end(), begin, begin + size);
  });
  return bytes;
}

}  // namespace sdpa::npy
