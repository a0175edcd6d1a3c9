// `sdpa run`: attention on .npy files.
//
// Data flow: read the inputs (whole, checked against the file size before allocating) → view
// them without copying (Fortran order becomes column-major strides) → validate with
// sdpa::Explain before creating any output → compute → write temporary files → rename them into
// place. Any failure on the way leaves no output file behind.
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
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
    "Inputs are float32 or float64 .npy files (C or Fortran order) of rank 2 (seq, dim), 3\n"
    "(heads, seq, dim) or 4 (batch, heads, seq, dim); query, key and value share one dtype and\n"
    "rank. GQA/MQA: key and value may have fewer heads than query if they divide its heads.\n"
    "The output has the query's dtype and rank, shape (..., q_len, v_dim), C order.\n"
    "\n"
    "options:\n"
    "  --query FILE      query,  (batch, heads,    q_len,  head_dim)\n"
    "  --key FILE        key,    (batch, kv_heads, kv_len, head_dim)\n"
    "  --value FILE      value,  (batch, kv_heads, kv_len, v_dim)\n"
    "  --out FILE        where to write the output (replaced only on success)\n"
    "  --mask FILE       bool (true = attend) or float (added to the scaled scores) mask,\n"
    "                    broadcastable to (batch, heads, q_len, kv_len); a float mask of the\n"
    "                    other float type is converted to the query's\n"
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
    "Rows that see no key get out = 0 and lse = -inf.\n"
    "\n"
    "example:\n"
    "  python3 -c \"import numpy as np; [np.save(n, np.random.randn(8, 128, 64).astype('f4'))\n"
    "              for n in 'qkv']\"\n"
    "  sdpa run --query q.npy --key k.npy --value v.npy --out o.npy --causal top-left\n";

const std::vector<Flag> kFlags = {
    {"query", true},   {"key", true},     {"value", true},    {"out", true},
    {"mask", true},    {"causal", true},  {"scale", true},    {"lse", true},
    {"threads", true}, {"backend", true}, {"verbose", false},
};

// An input file, read whole, with the flag it came from for messages.
struct Input {
  std::string flag;
  std::string path;
  npy::Array array;
  TensorView view;
};

Input ReadInput(const std::string& flag, const std::string& path) {
  Input input{"--" + flag, path, {}, {}};
  try {
    input.array = npy::ReadNpy(path);
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
                   ": dtype is bool but must be float32 or float64");
  }
  if (input.view.rank() < 2) {
    throw CliError(input.flag + " " + input.path + ": rank is " +
                   std::to_string(input.view.rank()) + " but must be 2, 3 or 4");
  }
}

// A float mask in the other float type, converted to `dtype` (contiguous copy).
Tensor ConvertMask(const TensorView& mask, DType dtype) {
  std::vector<std::int64_t> shape(mask.layout.shape, mask.layout.shape + mask.rank());
  Tensor converted(dtype, shape);
  const std::int64_t count = converted.size();
  std::vector<std::int64_t> index(shape.size(), 0);
  for (std::int64_t n = 0; n < count; ++n) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < index.size(); ++d) {
      offset += index[d] * mask.stride(static_cast<int>(d));
    }
    const double value = mask.dtype == DType::kFloat32
                             ? static_cast<const float*>(mask.data)[offset]
                             : static_cast<const double*>(mask.data)[offset];
    if (dtype == DType::kFloat32) {
      converted.data<float>()[n] = static_cast<float>(value);
    } else {
      converted.data<double>()[n] = value;
    }
    for (std::size_t d = index.size(); d-- > 0;) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return converted;
}

void WriteTo(OutputFile& file, const TensorView& view) {
  npy::WriteNpy(view, [&file](const void* data, std::size_t size) { file.Write(data, size); });
  file.Finish();
}

std::string ShapeText(const TensorView& view) {
  std::string text = "(";
  for (int d = 0; d < view.rank(); ++d) {
    text += (d ? ", " : "") + std::to_string(view.dim(d));
  }
  return text + (view.rank() == 1 ? ",)" : ")");
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
  if (lse_path && *lse_path == out_path) {
    throw UsageError("run: --out and --lse are the same file '" + out_path + "'");
  }

  const Input query = ReadInput("query", query_path);
  const Input key = ReadInput("key", key_path);
  const Input value = ReadInput("value", value_path);
  for (const Input* input : {&query, &key, &value}) CheckOperand(*input);
  std::optional<Input> mask;
  Tensor converted_mask;
  if (mask_path) {
    mask = ReadInput("mask", *mask_path);
    options.mask = mask->view;
    const bool float_mask = mask->view.dtype != DType::kBool;
    if (float_mask && mask->view.dtype != query.view.dtype) {
      converted_mask = ConvertMask(mask->view, query.view.dtype);
      options.mask = converted_mask.view();
    }
  }

  // Validates every shape and option (sdpa::Error names the argument) before any output exists.
  const Plan plan = Explain(query.view, key.view, value.view, options);
  if (args.Has("verbose")) std::cerr << plan.ToString() << "\n";

  OutputFile out_file("--out", out_path);
  std::unique_ptr<OutputFile> lse_file;
  if (lse_path) lse_file = std::make_unique<OutputFile>("--lse", *lse_path);

  const Stopwatch clock;
  AttentionResult result;
  if (lse_file) {
    result = AttentionWithLse(query.view, key.view, value.view, options);
  } else {
    result.out = Attention(query.view, key.view, value.view, options);
  }
  const double seconds = clock.Seconds();

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

  std::cout << out_path << ": " << DTypeName(result.out.dtype()) << " "
            << ShapeText(result.out.view());
  if (lse_file) std::cout << ", " << *lse_path << ": " << ShapeText(result.lse.view());
  char timing[64];
  std::snprintf(timing, sizeof(timing), " (%.3f ms, %s)", seconds * 1e3, BackendName(plan.backend));
  std::cout << timing << "\n";
  return kExitOk;
}

}  // namespace sdpa::cli
