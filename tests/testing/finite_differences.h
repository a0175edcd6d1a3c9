// The pieces of a gradient check by finite differences: the scalar loss L = Σ out ∘ W (W random,
// so ∂L/∂out = W is the grad_out to compare with) and the central difference of L in one element.
// Which forward computes `out`, and so what the check proves, is the caller's choice; the
// tolerances and the error analysis of ε stay with each test.
#pragma once

#include <cstddef>

#include "testing/tensors.h"

namespace sdpa_test {

// L = Σ out ∘ weights, accumulated in long double so that the sum adds no rounding of its own to
// the difference of two nearly equal losses.
inline long double WeightedSum(const Array& out, const Array& weights) {
  long double loss = 0;
  for (std::size_t n = 0; n < out.values.size(); ++n) {
    loss += static_cast<long double>(out.values[n]) * static_cast<long double>(weights.values[n]);
  }
  return loss;
}

// (loss() with x + ε - loss() with x - ε) / 2ε, where `x` is an element that loss() reads; x is
// left as it was. Divides by the difference of the two points as rounded, not by 2ε itself.
template <typename Loss>
double CentralDifference(double& x, double epsilon, const Loss& loss) {
  const double x0 = x, up = x0 + epsilon, down = x0 - epsilon;
  x = up;
  const long double loss_up = loss();
  x = down;
  const long double loss_down = loss();
  x = x0;
  return static_cast<double>((loss_up - loss_down) / (up - down));
}

}  // namespace sdpa_test
