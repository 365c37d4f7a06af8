"""Builds the compiled decision core and wire codec, and generates the gRPC stubs; nothing else.

Metadata and dependencies live in pyproject.toml. Set ADBID_DEBUG=1 for a
debug build of the core (bounds checks, wraparound checks, line tracing).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
DEBUG = os.environ.get("ADBID_DEBUG") == "1"


def generate_stubs() -> None:
    """proto/adbid/v1/*.proto -> adbid/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    args = ["protoc", "-Iproto", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.", *protos]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")
    finally:
        os.chdir(cwd)


class BuildPy(build_py):
    def run(self):
        generate_stubs()
        super().run()


class BuildExt(build_ext):
    # Editable installs run build_ext but not build_py, so both generate.
    def run(self):
        generate_stubs()
        super().run()


directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "linetrace": DEBUG,
}
macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
# -ffp-contract=off: no fused multiply-add, so the value arithmetic rounds
# exactly as the Python reference does (the parity tests compare to the micro).
cflags = ["-O0", "-g"] if DEBUG else ["-O3", "-ffp-contract=off"]

extensions = [
    Extension(
        "adbid._decision",
        ["ext/decision.pyx"],
        define_macros=macros,
        extra_compile_args=cflags,
    ),
    Extension("adbid._wire", ["ext/wire.pyx"], define_macros=macros, extra_compile_args=cflags),
    Extension("adbid._fpmode", ["ext/fpmode.pyx"], extra_compile_args=cflags),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["ext"]),
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
)
