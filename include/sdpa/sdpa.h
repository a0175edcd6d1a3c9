// sdpa: scaled dot-product attention for C++.
//
//   #include <sdpa/sdpa.h>
//   sdpa::Tensor out = sdpa::Attention(query, key, value, {/*scale*/ {}, sdpa::Causal::kTopLeft});
//
// tensor.h   views and owned tensors      options.h  the options struct
// attention.h forward, explain, threads   seed.h     self_attention and compute_qkv
// error.h    sdpa::Error                  version.h  SDPA_VERSION
// half.h     bfloat16, float16 storage types   kv_cache.h attention over a KV cache (decode)
#pragma once

#include "sdpa/attention.h"
#include "sdpa/custom.h"
#include "sdpa/error.h"
#include "sdpa/half.h"
#include "sdpa/kv_cache.h"
#include "sdpa/merge.h"
#include "sdpa/options.h"
#include "sdpa/seed.h"
#include "sdpa/system.h"
#include "sdpa/tensor.h"
#include "sdpa/version.h"
