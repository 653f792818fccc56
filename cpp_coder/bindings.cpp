// pybind11 bindings: onedc_lib._coder. numpy int32 arrays in and out, GIL released while coding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <mutex>
#include <thread>

#include "rans.h"

namespace py = pybind11;
using onedc::Status;
using I32 = py::array_t<int32_t, py::array::c_style>;  // no forcecast: only lossless conversions

namespace {

void check(const Status& s) {
    if (!s.ok()) throw py::value_error(s.message);
}

const int32_t* vector_data(const I32& a, const char* name) {
    if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) + "-D");
    return a.data();
}

void check_same_length(const I32& symbols, const I32& indexes) {
    if (symbols.size() != indexes.size())
        throw py::value_error("symbols and indexes differ in length: " + std::to_string(symbols.size()) + " vs " +
                              std::to_string(indexes.size()));
}

int resolve_threads(int threads) {
    if (threads < 0) throw py::value_error("threads must be >= 0 (0: hardware concurrency)");
    if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return threads;
}

std::shared_ptr<onedc::Tables> make_tables(const I32& cdf, const I32& cdf_length, const I32& offset) {
    if (cdf.ndim() != 2) throw py::value_error("cdf must be 2-D [T, L]");
    const int64_t T = cdf.shape(0), L = cdf.shape(1);
    if (cdf_length.ndim() != 1 || cdf_length.shape(0) != T)
        throw py::value_error("cdf_length must be 1-D with one entry per cdf row");
    if (offset.ndim() != 1 || offset.shape(0) != T)
        throw py::value_error("offset must be 1-D with one entry per cdf row");
    auto t = std::make_shared<onedc::Tables>();
    check(t->build(cdf.data(), T, L, cdf_length.data(), offset.data()));
    return t;
}

py::bytes to_bytes(const onedc::OutBuf& b) {
    return py::bytes(reinterpret_cast<const char*>(b.begin), b.size);
}

std::pair<const uint8_t*, size_t> bytes_view(const py::bytes& data) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(data.ptr(), &p, &n) != 0) throw py::error_already_set();
    return {reinterpret_cast<const uint8_t*>(p), static_cast<size_t>(n)};
}

// Optional segment lengths: None, or a 1-D integer array (int64 after a lossless conversion).
struct Segments {
    py::array_t<int64_t, py::array::c_style> array;
    const int64_t* data = nullptr;
    size_t count = 0;
};

Segments segments_arg(const py::object& segments) {
    Segments s;
    if (segments.is_none()) return s;
    s.array = py::array_t<int64_t, py::array::c_style>::ensure(segments);
    if (!s.array) throw py::type_error("segments must be None or a 1-D array of integers");
    if (s.array.ndim() != 1) throw py::value_error("segments must be 1-D");
    s.data = s.array.data();
    s.count = static_cast<size_t>(s.array.size());
    return s;
}

// The incremental decoder with a lock: calls from several Python threads are serialised.
struct PyOdcDecoder {
    onedc::OdcDecoder dec;
    std::mutex mu;
};

}  // namespace

void bind_release_decoder(py::module_& m);  // release_bindings.cpp

PYBIND11_MODULE(_coder, m) {
    m.doc() = "rANS entropy coders of onedc (release y-stream format and the odc format), see cpp_coder/STREAMS.md";

    py::class_<onedc::Tables, std::shared_ptr<onedc::Tables>>(m, "Tables")
        .def(py::init(&make_tables), py::arg("cdf"), py::arg("cdf_length"), py::arg("offset"),
             "Validates a table set (int32 cdf [T, L], cdf_length [T], offset [T]) and builds its lookup "
             "structures. Raises ValueError on an invalid set.")
        .def_property_readonly("num_tables", &onedc::Tables::size)
        .def_property_readonly("max_length", &onedc::Tables::max_length)
        .def_property_readonly("memory_bytes", &onedc::Tables::memory_bytes);

    m.def(
        "release_encode",
        [](const onedc::Tables& t, const I32& symbols, const I32& indexes) {
            const int32_t* s = vector_data(symbols, "symbols");
            const int32_t* i = vector_data(indexes, "indexes");
            check_same_length(symbols, indexes);
            onedc::OutBuf out;
            Status st;
            {
                py::gil_scoped_release nogil;
                st = onedc::release_encode(t, s, i, static_cast<size_t>(symbols.size()), out);
            }
            check(st);
            return to_bytes(out);
        },
        py::arg("tables"), py::arg("symbols"), py::arg("indexes"),
        "Release y stream (flag byte 0x01 + rANS stream). Index -1 skips a symbol. Symbols must already be "
        "clamped as the release wrapper does.");

    m.def(
        "release_decode",
        [](const onedc::Tables& t, const py::bytes& data, const I32& indexes) {
            const int32_t* i = vector_data(indexes, "indexes");
            auto [p, size] = bytes_view(data);
            const size_t n = static_cast<size_t>(indexes.size());
            py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
            int32_t* o = out.mutable_data();
            Status st;
            {
                py::gil_scoped_release nogil;
                st = onedc::release_decode(t, p, size, i, n, o);
            }
            check(st);
            return out;
        },
        py::arg("tables"), py::arg("data"), py::arg("indexes"));

    m.def(
        "odc_encode",
        [](const onedc::Tables& t, const I32& symbols, const I32& indexes, int tiles, int threads,
           const py::object& segments, int lanes) {
            const int32_t* s = vector_data(symbols, "symbols");
            const int32_t* i = vector_data(indexes, "indexes");
            check_same_length(symbols, indexes);
            threads = resolve_threads(threads);
            const Segments seg = segments_arg(segments);
            onedc::OutBuf out;
            Status st;
            {
                py::gil_scoped_release nogil;
                st = onedc::odc_encode(t, s, i, static_cast<size_t>(symbols.size()), seg.data, seg.count, tiles,
                                       threads, lanes, out);
            }
            check(st);
            return to_bytes(out);
        },
        py::arg("tables"), py::arg("symbols"), py::arg("indexes"), py::arg("tiles") = 1, py::arg("threads") = 1,
        py::arg("segments") = py::none(), py::arg("lanes") = 0,
        "odc y stream: `tiles` (1..255) independent tiles, coded on `threads` threads (0: all cores). "
        "`segments`: lengths of the segments the symbols come in (default: one). `lanes`: interleaved states "
        "per tile (1, 2, 4, 8, 16; 0: chosen per tile from its estimated size).");

    m.def(
        "odc_decode",
        [](const onedc::Tables& t, const py::bytes& data, const I32& indexes, int threads,
           const py::object& segments, bool simd) {
            const int32_t* i = vector_data(indexes, "indexes");
            auto [p, size] = bytes_view(data);
            threads = resolve_threads(threads);
            const Segments seg = segments_arg(segments);
            const size_t n = static_cast<size_t>(indexes.size());
            py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
            int32_t* o = out.mutable_data();
            Status st;
            {
                py::gil_scoped_release nogil;
                st = onedc::odc_decode(t, p, size, i, n, seg.data, seg.count, threads, simd, o);
            }
            check(st);
            return out;
        },
        py::arg("tables"), py::arg("data"), py::arg("indexes"), py::arg("threads") = 1,
        py::arg("segments") = py::none(), py::arg("simd") = true,
        "`simd`: use the vector decoder where the CPU has one (same result; False: the scalar reference).");

    m.def("simd_available", &onedc::simd_available,
          "Whether this CPU runs the vector odc decoder (AVX-512 F, BW, VL, DQ, VBMI and VPOPCNTDQ).");

    py::class_<PyOdcDecoder>(m, "OdcDecoder",
                             "Decodes an odc stream one segment at a time: decode(indexes) per segment, then "
                             "finish(). Any error (ValueError) leaves it failed.")
        .def(py::init([](std::shared_ptr<onedc::Tables> t, const py::bytes& data, int threads, bool simd) {
                 auto d = std::make_unique<PyOdcDecoder>();
                 auto [p, size] = bytes_view(data);
                 check(d->dec.open(std::move(t), p, size, resolve_threads(threads), false, simd));
                 return d;
             }),
             py::arg("tables"), py::arg("data"), py::arg("threads") = 1, py::arg("simd") = true)
        .def_property_readonly("tiles", [](PyOdcDecoder& d) { return d.dec.tiles(); })
        .def(
            "decode",
            [](PyOdcDecoder& d, const I32& indexes) {
                const int32_t* i = vector_data(indexes, "indexes");
                const size_t n = static_cast<size_t>(indexes.size());
                py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
                int32_t* o = out.mutable_data();
                Status st;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(d.mu);
                    st = d.dec.decode(i, n, o);
                }
                check(st);
                return out;
            },
            py::arg("indexes"))
        .def("finish", [](PyOdcDecoder& d) {
            Status st;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(d.mu);
                st = d.dec.finish();
            }
            check(st);
        });

    bind_release_decoder(m);
}
