// `sdpa run`: attention on .npy files.
//
// Data flow: parse the whole command line (the variant flags into sdpa::Options) → look at the
// output paths (OutputTarget: a device is written in place, a link followed, an output that is
// an input refused) → read the inputs (whole, checked against the file size before allocating),
// then the @FILE.npy lists of the variant flags → view them without copying (Fortran order
// becomes column-major strides) → validate with sdpa::Explain before creating any output →
// compute → write temporary files → rename them into place. Any failure on the way, and any
// SIGINT, SIGTERM, SIGHUP or SIGPIPE, leaves no output file behind.
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "cli.h"
#include "measure.h"
#include "npy.h"
#include "output_file.h"
#include "sdpa/attention.h"

namespace sdpa::cli {
namespace {

constexpr const char* kHelp =
    "usage: sdpa run --query Q.npy --key K.npy --value V.npy --out OUT.npy [options]\n"
    "\n"
    "Computes out = softmax(scale * Q K^T + mask) V and writes it as a .npy file.\n"
    "\n"
    "Inputs are .npy files (C or Fortran order) of rank 2 (seq, dim), 3 (heads, seq, dim) or\n"
    "4 (batch, heads, seq, dim), all of one rank, of float32 ('<f4'), float16 ('<f2') or\n"
    "bfloat16 ('<V2', as np.save writes ml_dtypes.bfloat16 arrays; load the output with\n"
    "np.load(f).view(ml_dtypes.bfloat16)), key and value of one dtype; or all float64 (the\n"
    "reference precision). 16-bit inputs compute in float32 (docs/semantics.md, 13.9).\n"
    "GQA/MQA: key and value may have fewer heads than query if they divide its heads.\n"
    "The output has the query's dtype (or --out-dtype) and rank, shape (..., q_len, v_dim),\n"
    "C order; lse is float32 (float64 for float64 inputs).\n"
    "\n"
    "options:\n"
    "  --query FILE      query,  (batch, heads,    q_len,  head_dim)\n"
    "  --key FILE        key,    (batch, kv_heads, kv_len, head_dim)\n"
    "  --value FILE      value,  (batch, kv_heads, kv_len, v_dim)\n"
    "  --out FILE        where to write the output (replaced only on success; see outputs)\n"
    "  --out-dtype TYPE  the output's dtype: float32, float16 or bfloat16 (any of them for\n"
    "                    16-bit or float32 inputs), float64 (for float64 inputs); default: the\n"
    "                    query's\n"
    "  --mask FILE       bool (true = attend) or float (added to the scaled scores) mask,\n"
    "                    broadcastable to (batch, heads, q_len, kv_len); a float mask may be\n"
    "                    of any of the float dtypes, whatever the query's\n"
    "  --causal MODE     top-left (key j visible to query i if j <= i, like PyTorch) or\n"
    "                    bottom-right (j <= i + kv_len - q_len, like FlashAttention); default "
    "none\n"
    "  --scale S         multiplies Q K^T; default 1/sqrt(head_dim)\n"
    "  --lse FILE        also write the log-sum-exp of each row, shape (..., q_len)\n"
    "  --threads N       threads for the CPU engine (0 = all cores, the default)\n"
    "  --backend NAME    auto (default), cpu or reference (the float64 oracle)\n"
    "  --verbose         print the plan (backend, path, tiles, SIMD target) to stderr\n"
    "  -h, --help        show this help\n"
    "\n"
    "variants (docs/semantics.md, section 13, has the formulas):\n"
    "  --window L,R      sliding window: query i sees keys j with d - L <= j <= d + R, where\n"
    "                    d = i under --causal top-left and i + kv_len - q_len otherwise; a side\n"
    "                    that is empty or 'inf' is unbounded (e.g. 256,0 or 128,)\n"
    "  --alibi-slopes LIST\n"
    "                    ALiBi: adds -slope[h] * |i + kv_len - q_len - j| to the scores of\n"
    "                    query head h; one finite slope per query head\n"
    "  --softcap C       logit softcap: s -> C * tanh(s / C) after scaling; C > 0\n"
    "  --sinks LIST      attention sinks: one logit per query head that joins the softmax\n"
    "                    denominator but has no value (-inf = no sink); lse includes it\n"
    "  --cu-seqlens-q LIST, --cu-seqlens-k LIST\n"
    "                    packed sequences (batch 1): sequence s is query rows [q[s], q[s+1]) and\n"
    "                    keys [k[s], k[s+1]) and attends only within itself; give both, each\n"
    "                    from 0 to q_len (kv_len), non-decreasing, sequences + 1 values\n"
    "  --dropout P       zero each attention probability with probability P in [0, 1] and\n"
    "                    scale the rest by 1 / (1 - P); default 0\n"
    "  --seed S          dropout's seed, an integer in [0, 2^64 - 1]; default 0. A seed drops\n"
    "                    the same probabilities for any thread count and backend\n"
    "\n"
    "A LIST is numbers separated by commas (0.5,0.25,-inf) or @FILE.npy holding a 1-D array:\n"
    "float32/float64 for --alibi-slopes and --sinks, int32/int64 for --cu-seqlens-q/-k.\n"
    "\n"
    "Rows that see no key get out = 0 and lse = -inf (their sink, with --sinks).\n"
    "\n"
    "outputs (--out, --lse):\n"
    "  A regular file is written to a temporary file next to it and renamed over it on success,\n"
    "  so it appears whole or not at all. A character or block device or a FIFO (/dev/null,\n"
    "  /dev/stdout) is written in place, never replaced; when an output is standard output the\n"
    "  summary line is not printed. A symbolic link is followed: the file it names is written\n"
    "  and the link kept. A directory, a socket and a dangling link are refused (exit 1). An\n"
    "  output that is the same file as the other output or as any input, also through ./, a\n"
    "  symbolic link or a hard link, is refused before any file is read (exit 2).\n"
    "  SIGINT, SIGTERM, SIGHUP and SIGPIPE remove the temporary files and exit with\n"
    "  128 + the signal number (130 for Ctrl-C); going over a file size limit (ulimit -f) is a\n"
    "  write error.\n"
    "\n"
    "example:\n"
    "  python3 -c \"import numpy as np; [np.save(n, np.random.randn(8, 128, 64).astype('f4'))\n"
    "              for n in 'qkv']\"\n"
    "  sdpa run --query q.npy --key k.npy --value v.npy --out o.npy --causal top-left\n"
    "  sdpa run --query q.npy --key k.npy --value v.npy --out o.npy --causal bottom-right \\\n"
    "           --window 32,0 --softcap 30 --sinks @sinks.npy\n";

const std::vector<Flag> kFlags = {
    {"query", true},        {"key", true},     {"value", true},    {"out", true},
    {"mask", true},         {"causal", true},  {"scale", true},    {"lse", true},
    {"threads", true},      {"backend", true}, {"verbose", false}, {"window", true},
    {"alibi-slopes", true}, {"softcap", true}, {"sinks", true},    {"cu-seqlens-q", true},
    {"cu-seqlens-k", true}, {"dropout", true}, {"seed", true},     {"out-dtype", true},
};

// An input file, read whole, with the flag it came from for messages.
struct Input {
  std::string flag;
  std::string path;
  npy::Array array;
  TensorView view;
};

npy::Array ReadArray(const std::string& flag, const std::string& path) {
  try {
    return npy::ReadNpy(path);
  } catch (const npy::NpyError& e) {
    throw CliError(flag + " " + path + ": " + e.what());
  }
}

// A tensor input (query, key, value, mask): float32, float64, float16, bfloat16 or bool.
Input ReadInput(const std::string& flag, const std::string& path) {
  Input input{"--" + flag, path, ReadArray("--" + flag, path), {}};
  if (npy::IsInteger(input.array.type())) {
    throw CliError(input.flag + " " + path + ": dtype is " +
                   npy::ElementTypeName(input.array.type()) + " but must be " +
                   (flag == "mask" ? "bool or a float dtype" : "a float dtype") +
                   " (float32, float64, float16, bfloat16)");
  }
  try {
    input.view = input.array.view();
  } catch (const npy::NpyError& e) {
    throw CliError(input.flag + " " + path + ": " + e.what());
  }
  return input;
}

// query, key and value must be attention operands: float, rank 2 to 4. The library checks this
// too, but only the tool knows which file a view came from.
void CheckOperand(const Input& input) {
  if (input.view.dtype == DType::kBool) {
    throw CliError(input.flag + " " + input.path +
                   ": dtype is bool but must be float32, float64, float16 or bfloat16");
  }
  if (input.view.rank() < 2) {
    throw CliError(input.flag + " " + input.path + ": rank is " +
                   std::to_string(input.view.rank()) + " but must be 2, 3 or 4");
  }
}

// --out-dtype: the dtype the output is written in (the query's when not given).
DType OutDType(const std::string& name, DType query_dtype) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float64") return DType::kFloat64;
  return query_dtype;
}

// out (..., q_len, v_dim) of `dtype` and lse (..., q_len) of the call's compute type, which
// sdpa::Forward fills. The library checks that `dtype` suits the inputs (float64 with float64).
AttentionResult Allocate(const TensorView& query, const TensorView& value, DType dtype) {
  std::vector<std::int64_t> shape(query.layout.shape, query.layout.shape + query.rank());
  const DType lse_dtype = query.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  AttentionResult result;
  result.lse = Tensor(lse_dtype, std::vector<std::int64_t>(shape.begin(), shape.end() - 1));
  shape.back() = value.layout.shape[value.rank() - 1];
  result.out = Tensor(dtype, shape);
  return result;
}

void WriteTo(OutputFile& file, const TensorView& view) {
  npy::WriteNpy(view, [&file](const void* data, std::size_t size) { file.Write(data, size); });
  file.Finish();
}

std::string ShapeText(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t d = 0; d < shape.size(); ++d) {
    text += (d ? ", " : "") + std::to_string(shape[d]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

std::string ShapeText(const TensorView& view) {
  return ShapeText(std::vector<std::int64_t>(view.layout.shape, view.layout.shape + view.rank()));
}

// ---- The variant flags. Each value is parsed into its option's type here, and a value that does
// not parse is a bad command line (exit 2); whether a parsed value is allowed (window sides >= 0,
// softcap > 0, one slope per head, offsets that fit the inputs ...) is the library's rule, checked
// by sdpa::Explain with its own message (exit 1).

// A whole string as a number (strtod: also inf, -inf, nan; the library rejects those where they
// are not allowed) or as a decimal int64.
bool ParseNumber(const std::string& text, double* value) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return false;
  char* end = nullptr;
  *value = std::strtod(text.c_str(), &end);
  return *end == '\0';
}

bool ParseNumber(const std::string& text, std::int64_t* value) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return false;
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(text.c_str(), &end, 10);
  *value = parsed;
  return *end == '\0' && errno != ERANGE;
}

// --window LEFT,RIGHT: each side an integer, or empty or "inf" for unbounded.
std::optional<Window> GetWindow(const Args& args) {
  const std::optional<std::string> value = args.Get("window");
  if (!value) return std::nullopt;
  const std::size_t comma = value->find(',');
  Window window;
  bool ok = comma != std::string::npos && value->find(',', comma + 1) == std::string::npos;
  for (int side = 0; side < 2 && ok; ++side) {
    const std::string text = side == 0 ? value->substr(0, comma) : value->substr(comma + 1);
    if (text.empty() || text == "inf") continue;
    std::int64_t size = 0;
    ok = ParseNumber(text, &size);
    (side == 0 ? window.left : window.right) = size;
  }
  if (!ok) {
    args.Fail("--window is '" + *value +
              "' but must be LEFT,RIGHT with each side an integer, or empty or 'inf' for "
              "unbounded (e.g. 256,0 or 128,)");
  }
  return window;
}

// --seed: an unsigned 64-bit integer.
std::uint64_t GetSeed(const Args& args) {
  const std::optional<std::string> value = args.Get("seed");
  if (!value) return 0;
  errno = 0;
  char* end = nullptr;
  const unsigned long long parsed = std::strtoull(value->c_str(), &end, 10);
  if (value->empty() || !std::isdigit(static_cast<unsigned char>((*value)[0])) || *end != '\0' ||
      errno == ERANGE) {
    args.Fail("--seed is '" + *value + "' but must be an integer in [0, 18446744073709551615]");
  }
  return parsed;
}

// A list flag (--alibi-slopes, --sinks, --cu-seqlens-q/-k) as given on the command line: the
// numbers of "a,b,c", or the path of "@FILE.npy", which is read after the inputs.
template <typename T>
struct ListArg {
  std::string flag;                 // "--sinks"
  std::optional<std::string> path;  // from @FILE
  std::vector<T> values;            // from a,b,c
};

// `what` names the items in messages ("numbers", "integers").
template <typename T>
std::optional<ListArg<T>> GetList(const Args& args, const std::string& name, const char* what) {
  const std::optional<std::string> value = args.Get(name);
  if (!value) return std::nullopt;
  if (value->empty()) args.Fail("option --" + name + " is empty");
  ListArg<T> list{"--" + name, std::nullopt, {}};
  if ((*value)[0] == '@') {
    if (value->size() == 1) args.Fail("--" + name + " is '@' but must name a file after the @");
    list.path = value->substr(1);
    return list;
  }
  for (std::size_t start = 0;;) {
    const std::size_t comma = value->find(',', start);
    T number{};
    if (!ParseNumber(value->substr(start, comma == std::string::npos ? comma : comma - start),
                     &number)) {
      args.Fail("--" + name + " is '" + *value + "' but must be " + what +
                " separated by commas, or @FILE.npy");
    }
    list.values.push_back(number);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return list;
}

// The values of a list flag, reading its file if it named one: a non-empty 1-D array of
// float32/float64 (T = double) or int32/int64 (T = int64_t).
template <typename T>
std::vector<T> ListValues(const ListArg<T>& list) {
  if (!list.path) return list.values;
  const std::string where = list.flag + " " + *list.path + ": ";
  const npy::Array array = ReadArray(list.flag, *list.path);
  constexpr bool kIntegers = std::is_integral_v<T>;
  // (16-bit floats are refused too: per-head values are few, and float32 holds them exactly)
  const bool float_list =
      array.type() == npy::ElementType::kFloat32 || array.type() == npy::ElementType::kFloat64;
  if (kIntegers ? !npy::IsInteger(array.type()) : !float_list) {
    throw CliError(where + "dtype is " + npy::ElementTypeName(array.type()) + " but must be " +
                   (kIntegers ? "int32 or int64" : "float32 or float64"));
  }
  if (array.shape().size() != 1 || array.num_elements() == 0) {
    throw CliError(where + "shape is " + ShapeText(array.shape()) +
                   " but must be 1-D with at least one value");
  }
  if constexpr (kIntegers) {
    return array.Integers();
  } else {
    std::vector<double> values(static_cast<std::size_t>(array.num_elements()));
    const TensorView view = array.view();
    for (std::size_t n = 0; n < values.size(); ++n) {
      values[n] = view.dtype == DType::kFloat32 ? static_cast<const float*>(view.data)[n]
                                                : static_cast<const double*>(view.data)[n];
    }
    return values;
  }
}

// An input file the command will read: its flag and path.
struct InputPath {
  std::string flag;
  std::string path;
};

// Refuses (exit 2) an output that is the same file as the other output or as an input: renaming
// the result over an input would destroy it, and two outputs in one file would lose one. Runs
// before any file is read or created.
void CheckOutputsAreDistinct(const std::vector<const OutputTarget*>& outputs,
                             const std::vector<InputPath>& inputs) {
  auto refuse = [](const OutputTarget& output, const std::string& flag, const std::string& path) {
    throw UsageError("run: " + output.flag() + " " + output.path() + " is the same file as " +
                     flag + " " + path + "; choose another output path");
  };
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (outputs[i]->SameFileAs(*outputs[j])) {
        refuse(*outputs[i], outputs[j]->flag(), outputs[j]->path());
      }
    }
    for (const InputPath& input : inputs) {
      if (outputs[i]->Is(input.path)) refuse(*outputs[i], input.flag, input.path);
    }
  }
}

// The list flags' @FILE.npy paths, for CheckOutputsAreDistinct.
template <typename T>
void AddListPath(const std::optional<ListArg<T>>& list, std::vector<InputPath>* inputs) {
  if (list && list->path) inputs->push_back({list->flag, *list->path});
}

}  // namespace

int RunCommand(const std::vector<std::string>& argv) {
  const Args args = Args::Parse("run", kFlags, argv);
  if (args.help()) {
    std::cout << kHelp;
    return kExitOk;
  }
  // The whole command line first, so that a typo is reported before any file is read.
  Options options;
  options.scale = args.GetDouble("scale");
  const std::string causal = args.GetChoice("causal", "none", {"none", "top-left", "bottom-right"});
  options.causal = causal == "top-left"       ? Causal::kTopLeft
                   : causal == "bottom-right" ? Causal::kBottomRight
                                              : Causal::kNone;
  const std::string out_dtype =
      args.GetChoice("out-dtype", "query", {"query", "float32", "float16", "bfloat16", "float64"});
  const std::string backend = args.GetChoice("backend", "auto", {"auto", "cpu", "reference"});
  options.backend = backend == "cpu"         ? Backend::kCpu
                    : backend == "reference" ? Backend::kReference
                                             : Backend::kAuto;
  SetNumThreads(static_cast<int>(args.GetInt("threads", 0, 0, 4096)));
  const std::string query_path = args.Required("query");
  const std::string key_path = args.Required("key");
  const std::string value_path = args.Required("value");
  const std::string out_path = args.Required("out");
  const std::optional<std::string> mask_path = args.Get("mask");
  const std::optional<std::string> lse_path = args.Get("lse");
  if (mask_path && mask_path->empty()) throw UsageError("run: option --mask is empty");
  if (lse_path && lse_path->empty()) throw UsageError("run: option --lse is empty");
  options.window = GetWindow(args);
  const auto alibi_slopes = GetList<double>(args, "alibi-slopes", "numbers");
  options.softcap = args.GetDouble("softcap");
  const auto sinks = GetList<double>(args, "sinks", "numbers");
  const auto cu_seqlens_q = GetList<std::int64_t>(args, "cu-seqlens-q", "integers");
  const auto cu_seqlens_k = GetList<std::int64_t>(args, "cu-seqlens-k", "integers");
  if (cu_seqlens_q.has_value() != cu_seqlens_k.has_value()) {
    args.Fail(cu_seqlens_q ? "--cu-seqlens-q needs --cu-seqlens-k too"
                           : "--cu-seqlens-k needs --cu-seqlens-q too");
  }
  options.dropout_p = args.GetDouble("dropout").value_or(0.0);
  options.seed = GetSeed(args);

  // The outputs, before any file is read: what each path is, and that none is an input.
  InstallSignalHandlers();
  const OutputTarget out_target("--out", out_path);
  std::optional<OutputTarget> lse_target;
  if (lse_path) lse_target.emplace("--lse", *lse_path);
  std::vector<const OutputTarget*> outputs = {&out_target};
  if (lse_target) outputs.push_back(&*lse_target);
  std::vector<InputPath> inputs = {
      {"--query", query_path}, {"--key", key_path}, {"--value", value_path}};
  if (mask_path) inputs.push_back({"--mask", *mask_path});
  AddListPath(alibi_slopes, &inputs);
  AddListPath(sinks, &inputs);
  AddListPath(cu_seqlens_q, &inputs);
  AddListPath(cu_seqlens_k, &inputs);
  CheckOutputsAreDistinct(outputs, inputs);

  const Input query = ReadInput("query", query_path);
  const Input key = ReadInput("key", key_path);
  const Input value = ReadInput("value", value_path);
  for (const Input* input : {&query, &key, &value}) CheckOperand(*input);
  std::optional<Input> mask;
  if (mask_path) {
    mask = ReadInput("mask", *mask_path);
    options.mask = mask->view;
  }
  if (alibi_slopes) options.alibi_slopes = ListValues(*alibi_slopes);
  if (sinks) options.sinks = ListValues(*sinks);
  if (cu_seqlens_q) {
    options.cu_seqlens_q = ListValues(*cu_seqlens_q);
    options.cu_seqlens_k = ListValues(*cu_seqlens_k);
  }

  // Validates every shape and option (sdpa::Error names the argument) before any output exists.
  const Plan plan = Explain(query.view, key.view, value.view, options);
  if (args.Has("verbose")) std::cerr << plan.ToString() << "\n";

  AttentionResult result = Allocate(query.view, value.view, OutDType(out_dtype, query.view.dtype));
  // The output's dtype against the inputs', before any output exists (sdpa::Forward checks it
  // too, but only after the files are created).
  if ((result.out.dtype() == DType::kFloat64) != (query.view.dtype == DType::kFloat64)) {
    throw UsageError(std::string("run: --out-dtype is ") + DTypeName(result.out.dtype()) +
                     " but the query is " + DTypeName(query.view.dtype) + "; " +
                     (query.view.dtype == DType::kFloat64 ? "float64 inputs give a float64 output"
                                                          : "float64 outputs need float64 inputs"));
  }
  double seconds = 0;
  {
    // Created before computing, so that an unwritable directory is reported before the work.
    OutputFile out_file(out_target);
    std::unique_ptr<OutputFile> lse_file;
    if (lse_target) lse_file = std::make_unique<OutputFile>(*lse_target);

    const Stopwatch clock;
    Forward(query.view, key.view, value.view, result.out.mutable_view(), result.lse.mutable_view(),
            options);
    seconds = clock.Seconds();

    WriteTo(out_file, result.out.view());
    if (lse_file) WriteTo(*lse_file, result.lse.view());
    out_file.Commit();
    if (lse_file) {
      try {
        lse_file->Commit();
      } catch (...) {
        out_file.Retract();
        throw;
      }
    }
  }  // Both outputs are final: from here on a signal leaves them.

  // The summary would follow the .npy bytes into the same stream.
  for (const OutputTarget* output : outputs) {
    if (output->IsStandardOutput()) return kExitOk;
  }
  std::cout << out_path << ": " << DTypeName(result.out.dtype()) << " "
            << ShapeText(result.out.view());
  if (lse_target) std::cout << ", " << *lse_path << ": " << ShapeText(result.lse.view());
  char timing[64];
  std::snprintf(timing, sizeof(timing), " (%.3f ms, %s)", seconds * 1e3, BackendName(plan.backend));
  std::cout << timing << "\n";
  return kExitOk;
}

}  // namespace sdpa::cli
