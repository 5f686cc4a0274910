"""Builds the optional compiled loops (mergehub/engine/native/loops.c); everything else is
declared in pyproject.toml. ``optional=True``: without a C compiler the install still
succeeds and the engine uses its torch path (slower for TIES, same results)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mergehub.engine.native._loops",
            sources=["mergehub/engine/native/loops.c"],
            # no FMA contraction: the loops must round exactly like the torch path
            extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-trapping-math"],
            libraries=["m"],  # fmaf where the CPU has no FMA instruction
            optional=True,
        )
    ]
)
