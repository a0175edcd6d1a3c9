// sdpa._sdpa_mpi: the nanobind extension behind sdpa.distributed, built when SDPA_WITH_MPI is on,
// so that `import sdpa` never loads MPI. Types only, like sdpa._sdpa: float32 arrays become
// views, results are sdpa::Tensors handed to numpy in capsules, the communicator arrives as its
// Fortran handle (mpi4py's Comm.py2f(), converted by MPI_Comm_f2c: portable across MPI builds),
// and the GIL is released while the ranks compute.
#include <mpi.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sdpa/distributed.h"
#include "sdpa/sdpa.h"

namespace nb = nanobind;

namespace {

using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
using OutArray = nb::ndarray<nb::numpy>;

sdpa::TensorView ToView(const char* name, const InArray& array) {
  if (array.dtype() != nb::dtype<float>()) {
    throw sdpa::DTypeError(std::string("sdpa: ") + name + " must be float32");
  }
  if (array.ndim() > static_cast<std::size_t>(sdpa::kMaxRank)) {
    throw sdpa::Error(std::string("sdpa: ") + name + " has rank " + std::to_string(array.ndim()) +
                      " but must have rank 4");
  }
  sdpa::Layout layout;
  layout.rank = static_cast<int>(array.ndim());
  for (int d = 0; d < layout.rank; ++d) {
    layout.shape[d] = static_cast<std::int64_t>(array.shape(static_cast<std::size_t>(d)));
    layout.strides[d] = array.stride(static_cast<std::size_t>(d));
  }
  return sdpa::TensorView(array.data(), sdpa::DType::kFloat32, layout);
}

OutArray ToNumpy(sdpa::Tensor&& tensor) {
  auto* owned = new sdpa::Tensor(std::move(tensor));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<sdpa::Tensor*>(p); });
  std::size_t shape[sdpa::kMaxRank] = {0, 0, 0, 0};
  for (int d = 0; d < owned->rank(); ++d) shape[d] = static_cast<std::size_t>(owned->dim(d));
  return OutArray(owned->mutable_view().data, static_cast<std::size_t>(owned->rank()), shape, owner,
                  nullptr, nb::dtype<float>());
}

struct Call {
  MPI_Comm comm;
  sdpa::SequenceLayout layout;
  sdpa::Options options;
  bool ulysses;
};

Call MakeCall(std::int64_t fortran_comm, const std::string& layout, bool is_causal,
              std::optional<double> scale, std::optional<double> softcap,
              const std::vector<double>& sinks, const std::string& algorithm) {
  Call c;
  c.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_comm));
  if (layout != "zigzag" && layout != "contiguous") {
    throw sdpa::Error("sdpa: layout is '" + layout + "' but must be 'zigzag' or 'contiguous'");
  }
  c.layout = layout == "zigzag" ? sdpa::SequenceLayout::kZigzag : sdpa::SequenceLayout::kContiguous;
  c.options.causal = is_causal ? sdpa::Causal::kTopLeft : sdpa::Causal::kNone;
  c.options.scale = scale;
  c.options.softcap = softcap;
  c.options.sinks = sinks;
  c.ulysses = algorithm == "ulysses";
  return c;
}

nb::tuple Forward(std::int64_t comm, const InArray& query, const InArray& key, const InArray& value,
                  const std::string& layout, bool is_causal, std::optional<double> scale,
                  std::optional<double> softcap, const std::vector<double>& sinks,
                  const std::string& algorithm) {
  const Call c = MakeCall(comm, layout, is_causal, scale, softcap, sinks, algorithm);
  const sdpa::TensorView q = ToView("query", query), k = ToView("key", key),
                         v = ToView("value", value);
  if (q.rank() != 4 || v.rank() != 4) throw sdpa::Error("sdpa: query and value must have rank 4");
  sdpa::Tensor out(sdpa::DType::kFloat32, {q.dim(0), q.dim(1), q.dim(2), v.dim(3)});
  sdpa::Tensor lse(sdpa::DType::kFloat32, {q.dim(0), q.dim(1), q.dim(2)});
  {
    nb::gil_scoped_release release;
    sdpa::MutableTensorView lse_view = lse.mutable_view();
    if (c.ulysses) {
      sdpa::UlyssesForward(c.comm, q, k, v, out.mutable_view(), &lse_view, c.options, c.layout);
    } else {
      sdpa::RingForward(c.comm, q, k, v, out.mutable_view(), lse_view, c.options, c.layout);
    }
  }
  return nb::make_tuple(ToNumpy(std::move(out)), ToNumpy(std::move(lse)));
}

nb::tuple Backward(std::int64_t comm, const InArray& grad_out, const InArray& query,
                   const InArray& key, const InArray& value, const InArray& out, const InArray& lse,
                   const std::string& layout, bool is_causal, std::optional<double> scale,
                   std::optional<double> softcap, const std::vector<double>& sinks,
                   const std::string& algorithm) {
  const Call c = MakeCall(comm, layout, is_causal, scale, softcap, sinks, algorithm);
  const sdpa::TensorView dout = ToView("grad_out", grad_out), q = ToView("query", query),
                         k = ToView("key", key), v = ToView("value", value), o = ToView("out", out),
                         l = ToView("lse", lse);
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4) {
    throw sdpa::Error("sdpa: query, key and value must have rank 4");
  }
  sdpa::Tensor dq(sdpa::DType::kFloat32, {q.dim(0), q.dim(1), q.dim(2), q.dim(3)});
  sdpa::Tensor dk(sdpa::DType::kFloat32, {k.dim(0), k.dim(1), k.dim(2), k.dim(3)});
  sdpa::Tensor dv(sdpa::DType::kFloat32, {v.dim(0), v.dim(1), v.dim(2), v.dim(3)});
  {
    nb::gil_scoped_release release;
    if (c.ulysses) {
      sdpa::UlyssesBackward(c.comm, q, k, v, o, l, dout, dq.mutable_view(), dk.mutable_view(),
                            dv.mutable_view(), c.options, c.layout);
    } else {
      sdpa::RingBackward(c.comm, q, k, v, o, l, dout, dq.mutable_view(), dk.mutable_view(),
                         dv.mutable_view(), c.options, c.layout);
    }
  }
  return nb::make_tuple(ToNumpy(std::move(dq)), ToNumpy(std::move(dk)), ToNumpy(std::move(dv)));
}

}  // namespace

NB_MODULE(_sdpa_mpi, m) {
  m.doc() = "sdpa's ring and Ulysses attention over MPI. Use sdpa.distributed.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const sdpa::DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const sdpa::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const sdpa::MpiError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  m.def("forward", &Forward, nb::arg("comm"), nb::arg("query"), nb::arg("key"), nb::arg("value"),
        nb::arg("layout"), nb::arg("is_causal"), nb::arg("scale").none(), nb::arg("softcap").none(),
        nb::arg("sinks"), nb::arg("algorithm"),
        "RingForward / UlyssesForward on rank-4 float32 shards; returns (out, lse).");
  m.def("backward", &Backward, nb::arg("comm"), nb::arg("grad_out"), nb::arg("query"),
        nb::arg("key"), nb::arg("value"), nb::arg("out"), nb::arg("lse"), nb::arg("layout"),
        nb::arg("is_causal"), nb::arg("scale").none(), nb::arg("softcap").none(), nb::arg("sinks"),
        nb::arg("algorithm"),
        "RingBackward / UlyssesBackward; returns (grad_query, grad_key, grad_value).");
}
