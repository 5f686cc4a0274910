"""Builds the optional compiled kernels (mergehub/engine/kernels/kernels.c); everything else is
declared in pyproject.toml. ``optional=True``: without a C compiler the install still succeeds
and the engine runs the operators' torch statements (slower for TIES and friends, same bits).

The library carries the SHA-256 of the header it was compiled against (mh_interface_digest),
which the binding compares with the header it reads: a library built from another version of
the interface is refused at load instead of being called with the wrong signatures."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

KERNELS = Path("mergehub/engine/kernels")
HEADER = KERNELS / "mergehub_kernels.h"

setup(
    ext_modules=[
        Extension(
            "mergehub.engine.kernels._kernels",
            sources=[str(KERNELS / "kernels.c")],
            depends=[str(HEADER)],
            include_dirs=[str(KERNELS)],
            define_macros=[("MH_INTERFACE_DIGEST", '"%s"' % hashlib.sha256(HEADER.read_bytes()).hexdigest())],
            # no FMA contraction: the kernels must round exactly like the torch statements
            extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-trapping-math"],
            libraries=["m"],
            optional=True,
        )
    ]
)
