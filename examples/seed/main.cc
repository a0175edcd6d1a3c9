// The seed task's example: softmax(Q Kᵀ / sqrt(d_k)) V for two 2-d tokens.
// Prints [[1.660477, 2.660477], [2.339523, 3.339523]].
#include <sdpa/sdpa.h>

#include <cstdio>

int main() {
  const sdpa::Matrix Q = {{1, 0}, {0, 1}};
  const sdpa::Matrix K = {{1, 0}, {0, 1}};
  const sdpa::Matrix V = {{1, 2}, {3, 4}};
  const sdpa::Matrix out = sdpa::self_attention(Q, K, V);
  std::printf("[[%.6f, %.6f], [%.6f, %.6f]]\n", out[0][0], out[0][1], out[1][0], out[1][1]);
  return 0;
}
