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
if sys.platform.startswith("linux"):
    # Links libgomp.so.1 by soname: in a process that imported torch first, this is torch's
    # own copy, so both share one OpenMP thread pool.
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

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
