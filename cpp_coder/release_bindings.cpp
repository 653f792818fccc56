// pybind11 bindings of the step-wise release decoder (release.h), registered by bindings.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <mutex>

#include "release.h"

namespace py = pybind11;

namespace {

using I32 = py::array_t<int32_t, py::array::c_style>;  // no forcecast: only lossless conversions

// The decoder with a lock: calls from several Python threads are serialised.
struct PyReleaseDecoder {
    onedc::ReleaseDecoder dec;
    std::mutex mu;
};

void check(const onedc::Status& s) {
    if (!s.ok()) throw py::value_error(s.message);
}

}  // namespace

void bind_release_decoder(py::module_& m) {
    py::class_<PyReleaseDecoder>(m, "ReleaseDecoder",
                                 "Decodes a release y stream one step at a time: decode(indexes) per step, then "
                                 "finish() (checks the coder's final state). Any error (ValueError) leaves it failed.")
        .def(py::init([](std::shared_ptr<onedc::Tables> t, const py::bytes& data) {
                 auto d = std::make_unique<PyReleaseDecoder>();
                 char* p = nullptr;
                 Py_ssize_t n = 0;
                 if (PyBytes_AsStringAndSize(data.ptr(), &p, &n) != 0) throw py::error_already_set();
                 check(d->dec.open(std::move(t), reinterpret_cast<const uint8_t*>(p), static_cast<size_t>(n)));
                 return d;
             }),
             py::arg("tables"), py::arg("data"))
        .def(
            "decode",
            [](PyReleaseDecoder& d, const I32& indexes) {
                if (indexes.ndim() != 1) throw py::value_error("indexes must be 1-D");
                const int32_t* i = indexes.data();
                const size_t n = static_cast<size_t>(indexes.size());
                py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
                int32_t* o = out.mutable_data();
                onedc::Status st;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(d.mu);
                    st = d.dec.decode(i, n, o);
                }
                check(st);
                return out;
            },
            py::arg("indexes"))
        .def("finish", [](PyReleaseDecoder& d) {
            onedc::Status st;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(d.mu);
                st = d.dec.finish();
            }
            check(st);
        });
}
