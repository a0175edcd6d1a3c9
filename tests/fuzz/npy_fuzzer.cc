// libFuzzer target for the .npy reader of the sdpa tool (tools/sdpa/npy.h).
//
// Any input must either parse or throw npy::NpyError: no crash, no sanitizer report, no other
// exception, no allocation beyond the input's size. What parses must survive a round trip:
// encoding its view and parsing that gives the same bytes when encoded again. Integer arrays
// (which have no view and are never written) must read back as many values as they hold.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "npy.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sdpa::npy;
  Array array;
  try {
    array = ParseNpy(reinterpret_cast<const std::byte*>(data), size);
  } catch (const NpyError&) {
    return 0;
  }
  // The header's claim was checked against the input before allocating.
  if (array.num_elements() < 0 || static_cast<std::size_t>(array.num_elements()) > size) {
    std::abort();
  }
  if (IsInteger(array.type())) {
    // Index arrays have no view; reading them walks every element once.
    if (array.Integers().size() != static_cast<std::size_t>(array.num_elements())) std::abort();
    return 0;
  }
  sdpa::TensorView view;
  try {
    view = array.view();
  } catch (const NpyError&) {
    return 0;  // rank above 4
  }
  const std::vector<std::byte> encoded = EncodeNpy(view);
  const Array again = ParseNpy(encoded.data(), encoded.size());
  if (again.shape() != array.shape() || again.type() != array.type() || again.fortran_order()) {
    std::abort();
  }
  if (EncodeNpy(again.view()) != encoded) std::abort();
  return 0;
}
