"""Builds the C++ rANS coder in cpp_coder/ into onedc_lib._coder (metadata lives in pyproject.toml).

ONEDC_SANITIZE=address,undefined (any -fsanitize= list) builds it instrumented, for `make sanitize`: the process
that loads it must preload the sanitizer runtime (LD_PRELOAD=libasan.so, see the Makefile)."""
import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

sanitize = os.environ.get("ONEDC_SANITIZE", "")
if sanitize:  # every finding aborts; -O1 -g keeps the reports readable
    compile_args = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-O1", "-g"]
    link_args = [f"-fsanitize={sanitize}"]
else:
    compile_args, link_args = ["-O3"], []

coder = Pybind11Extension(
    "onedc_lib._coder",
    sorted(glob("cpp_coder/*.cpp")),
    include_dirs=["cpp_coder"],
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[("NDEBUG", "1")],
)

setup(ext_modules=[coder], cmdclass={"build_ext": build_ext})
