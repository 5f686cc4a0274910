"""The kernels' one declared interface (mergehub_kernels.h): the library is built where there
is a compiler, the binding refuses a library built against another header or lacking a
declared function, the compiler refuses a definition that disagrees with the header, and
MERGEHUB_NATIVE=0 switches every kernel off."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from kernel_helpers import HAVE_COMPILER

from mergehub.engine import kernels
from mergehub.engine.kernels import binding

needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C compiler (cc)")


def test_the_kernels_are_built():
    # `pip install -e .` builds them (setup.py) with the C compiler; where there is one, a
    # missing library means the build failed and the engine silently runs its torch statements
    if not HAVE_COMPILER and binding.library_path() is None:
        pytest.skip("no C compiler (cc): the kernels were not built; the engine runs its torch statements")
    assert binding.library_path() is not None, "mergehub/engine/kernels/_kernels*.so is missing: rerun " \
                                               "pip install -e . and read its errors"
    assert kernels.enabled()


def test_cdef_reads_the_header_without_its_preprocessor_lines():
    text = binding.declarations(binding.HEADER.read_text())
    assert "#include" not in text and "#ifndef" not in text and "#endif" not in text
    assert "#define MH_KEY_BINS 32768" in text  # integer constants stay: the binding reads them
    assert "mh_family_combine" in text and "} mh_model;" in text


@pytest.mark.skipif(binding.library_path() is None, reason="the kernels are not built")
def test_a_library_built_against_another_header_is_refused(tmp_path):
    header = tmp_path / "mergehub_kernels.h"
    changed = binding.HEADER.read_text().replace("float t, int64_t first", "double t, int64_t first")
    assert changed != binding.HEADER.read_text()
    header.write_text(changed)
    with pytest.raises(binding.KernelInterfaceError, match="built against another mergehub_kernels.h"):
        binding.load(binding.library_path(), header)
    ffi, lib = binding.load(binding.library_path())  # the header it was built against
    assert ffi.string(lib.mh_interface_digest()).decode() == hashlib.sha256(binding.HEADER.read_bytes()).hexdigest()


def _build(tmp_path, header_text: str, source: str):
    """A shared library from ``source`` (which includes the header), with the header's digest."""
    (tmp_path / "mergehub_kernels.h").write_text(header_text)
    (tmp_path / "lib.c").write_text(source)
    digest = hashlib.sha256(header_text.encode()).hexdigest()
    return subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "lib.so"), str(tmp_path / "lib.c"),
                           f'-DMH_INTERFACE_DIGEST="{digest}"', f"-I{tmp_path}"], capture_output=True, text=True)


@needs_compiler
def test_a_library_lacking_a_declared_function_is_refused_at_load(tmp_path):
    header = "#include <stdint.h>\nconst char *mh_interface_digest(void);\nint mh_declared(int64_t n);\n"
    source = '#include "mergehub_kernels.h"\nconst char *mh_interface_digest(void) { return MH_INTERFACE_DIGEST; }\n'
    assert _build(tmp_path, header, source).returncode == 0
    with pytest.raises(binding.KernelInterfaceError, match="lacks mh_declared"):
        binding.load(tmp_path / "lib.so", tmp_path / "mergehub_kernels.h")


@needs_compiler
def test_the_compiler_refuses_a_definition_that_disagrees_with_the_header(tmp_path):
    """kernels.c includes the header: a definition whose signature drifted does not compile."""
    header = binding.HEADER.read_text().replace("float t, int64_t first", "double t, int64_t first")
    result = _build(tmp_path, header, (binding.HERE / "kernels.c").read_text())
    assert result.returncode != 0 and "mh_nearswap" in result.stderr
    assert _build(tmp_path, binding.HEADER.read_text(), (binding.HERE / "kernels.c").read_text()).returncode == 0


def test_mergehub_native_0_switches_every_kernel_off():
    code = ("import torch\n"
            "from mergehub.engine import kernels\n"
            "from mergehub.engine.operators.base import TensorParams\n"
            "x = torch.zeros(4)\n"
            "p = TensorParams({'epsilon': 1e-5}, [{}])\n"
            "print(kernels.enabled(), kernels.find('ram', 'merge', x, [x], p, torch.float32, torch.float32))\n")
    env = dict(os.environ, MERGEHUB_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "None"]
