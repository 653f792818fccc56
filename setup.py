"""Builds the C++ rANS coder in cpp_coder/ into onedc_lib._coder (metadata lives in pyproject.toml)."""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

coder = Pybind11Extension(
    "onedc_lib._coder",
    sorted(glob("cpp_coder/*.cpp")),
    include_dirs=["cpp_coder"],
    cxx_std=17,
    extra_compile_args=["-O3"],
    define_macros=[("NDEBUG", "1")],
)

setup(ext_modules=[coder], cmdclass={"build_ext": build_ext})
