// The options of one attention call, as one typed struct.
#pragma once

#include <optional>

#include "sdpa/tensor.h"

namespace sdpa {

// Which keys a query may see, with i the query row and j the key column (0-based):
//   kTopLeft:     j <= i                  (PyTorch's is_causal)
//   kBottomRight: j <= i + kv_len - q_len (FlashAttention's causal; the last query sees every key)
enum class Causal { kNone, kTopLeft, kBottomRight };

// Which implementation computes the result.
//   kAuto:      the environment variable SDPA_BACKEND (`reference` or `cpu`) if set, else the
//               fastest available.
//   kReference: the plain float64-accumulating oracle (src/reference/); slow, exact.
//   kCpu:       the tiled online-softmax CPU engine (src/cpu/).
enum class Backend { kAuto, kReference, kCpu };

const char* CausalName(Causal causal);     // "none", "top_left", "bottom_right"
const char* BackendName(Backend backend);  // "auto", "reference", "cpu"

struct Options {
  // Multiplies Q·Kᵀ. Default 1/sqrt(head_dim). Must be finite.
  std::optional<double> scale;
  Causal causal = Causal::kNone;
  // Optional mask broadcastable to [batch, heads, q_len, kv_len] (right-aligned like numpy; every
  // dimension equal or 1; heads means query heads). Either bool (true = attend) or the query's
  // float type (added to the scaled scores; -inf removes the key). Combines with `causal`.
  std::optional<TensorView> mask;
  Backend backend = Backend::kAuto;
};

}  // namespace sdpa
