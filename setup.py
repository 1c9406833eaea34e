"""Builds the optional C++ kernels of ``sst.condensed`` (project metadata: pyproject.toml).

``pip install -e .`` compiles ``sst/condensed/_cpu.cpp`` with the system C++ compiler; the
extension is optional, so an install without a compiler still succeeds and ``sst.condensed``
runs its pure-PyTorch fallback instead.
"""

import sys

from setuptools import Extension, setup

compile_args = [
    "-O3",
    "-std=c++17",
    "-fno-math-errno",
    "-fvisibility=hidden",
    "-Wno-psabi",
    "-Wno-maybe-uninitialized",
]
link_args: list[str] = []
if sys.platform != "win32":
    compile_args.append("-pthread")  # the kernels' thread pool (std::thread)
    link_args.append("-pthread")

setup(
    ext_modules=[
        Extension(
            "sst.condensed._cpu",
            sources=["sst/condensed/_cpu.cpp"],
            language="c++",
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=True,
        )
    ]
)
