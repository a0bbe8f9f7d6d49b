"""Build and install gridtwin.

The load-flow kernel is a Cython extension. Without a working compiler the build warns and
gridtwin falls back to the NumPy reference backend, unless ``GRIDTWIN_REQUIRE_KERNEL=1`` is set:
then a failed build is a failed install.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

REQUIRE_KERNEL = os.environ.get("GRIDTWIN_REQUIRE_KERNEL", "") not in ("", "0", "false", "no")


def _extensions():
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:  # pragma: no cover - only without build deps
        if REQUIRE_KERNEL:
            raise
        print(f"gridtwin: WARNING: Cython/numpy missing ({exc}); kernel not built", file=sys.stderr)
        return []
    exts = []
    for pyx in sorted(glob.glob("twin/**/*.pyx", recursive=True)):
        name = pyx[:-4].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3", "-fno-math-errno"],  # lets sin+cos become sincos
            )
        )
    return cythonize(
        exts,
        language_level="3",
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


class KernelRequired(RuntimeError):
    """The kernel failed to build and GRIDTWIN_REQUIRE_KERNEL=1."""


class OptionalBuildExt(build_ext):
    """Build the kernel; fall back loudly, or fail when the kernel is required."""

    def run(self):
        try:
            super().run()
        except KernelRequired:
            raise
        except Exception as exc:
            self._fail(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc):
        if REQUIRE_KERNEL:
            raise KernelRequired(
                f"gridtwin: GRIDTWIN_REQUIRE_KERNEL=1 but the Cython kernel failed to build: {exc}"
            ) from exc
        print(
            "gridtwin: WARNING: the Cython load-flow kernel did not build "
            f"({exc}); the NumPy reference backend will be used.",
            file=sys.stderr,
        )


setup(
    name="gridtwin",
    version="0.1.0",
    description="Energy-grid digital twin with hardware-in-the-loop (pandapower, OPC UA, Modbus)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["twin", "twin.*", "hil", "hil.*", "grids", "grids.*",
                                    "scenarios", "scenarios.*"]),
    package_data={
        "twin": ["py.typed", "**/*.pyx", "**/*.pxd"],
        "hil": ["py.typed"],
        "grids": ["py.typed", "data/*.json", "data/*.m", "data/*.toml"],
        "scenarios": ["py.typed", "library/*.toml", "library/*.csv", "profiles/*.csv",
                      "baselines/*/*.json", "baselines/*/*.csv"],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "numpy>=2.0,<3",
        "scipy>=1.11",
        "pandas>=2.0",
        "pandapower==3.5.6",
        # asyncua and pymodbus change their APIs between minor releases: pinned.
        "asyncua==2.1.0",
        "pymodbus==3.16.1",
        "simpy==4.1.2",
        "pyarrow>=15",
        "rich>=13",
        "tomli-w>=1.0",
        "matpowercaseframes>=2.0",
        # the run report: plots (Agg backend) and the generated grid layout where no geodata
        "matplotlib>=3.7",
        "networkx>=3.0",
        "igraph>=0.11",
        # sweeps (gridtwin sweep): LocalCluster by default, a remote scheduler when given
        "dask[distributed]>=2024.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=1.0",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff>=0.6",
        ],
        "bench": ["lightsim2grid==1.2.0"],
    },
    entry_points={"console_scripts": ["gridtwin = scenarios.cli:main"]},
    zip_safe=False,
)
