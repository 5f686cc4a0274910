"""Packaging: ``pip install mergehub`` is the engine and the command line without the web stack,
``mergehub[web]`` adds the web app. Every third-party import of a module is covered by the
requirements of the part it belongs to (read from pyproject.toml, the imports parsed with ast),
and the command line runs with Django absent."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the packages `pip install mergehub` serves: no Django, no web dependency
COMMAND_LINE_PACKAGES = ("mergehub/engine", "mergehub/scoring", "mergehub/family", "mergehub/remote")
# import name → distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "psycopg": "psycopg", "rest_framework": "djangorestframework",
                 "django_q": "django-q2", "dj_database_url": "dj-database-url", "csp": "django-csp",
                 "axes": "django-axes", "markdown_it": "markdown-it-py", "drf_spectacular": "drf-spectacular",
                 "drf_spectacular_sidecar": "drf-spectacular-sidecar"}
# imported only where an optional extra is installed, behind a clear message when it is not
OPTIONAL = {"lm_eval"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _third_party_imports(package_dirs) -> dict[str, set[str]]:
    """{top-level module: files importing it} for every import in these directories that is
    neither the standard library nor mergehub itself."""
    found: dict[str, set[str]] = {}
    for directory in package_dirs:
        for path in (ROOT / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("mergehub", "jobs", "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _distribution(module: str) -> str:
    return DISTRIBUTIONS.get(module, module).lower().replace("_", "-")


def test_the_base_install_holds_no_web_dependency():
    core = _requirement_names(_project()["dependencies"])
    web = _requirement_names(_project()["optional-dependencies"]["web"])
    assert {"django", "djangorestframework", "django-q2", "gunicorn", "plotly"} <= web
    assert not core & {"django", "djangorestframework", "django-q2", "gunicorn", "plotly", "whitenoise",
                       "psycopg", "redis", "markdown-it-py"}


def test_the_command_line_imports_only_base_requirements():
    core = _requirement_names(_project()["dependencies"])
    imports = _third_party_imports(COMMAND_LINE_PACKAGES)
    missing = {m: sorted(files) for m, files in imports.items() if _distribution(m) not in core and m not in OPTIONAL}
    assert not missing, f"imported by the command line but not in [project] dependencies: {missing}"


def test_the_web_app_imports_only_base_and_web_requirements():
    project = _project()
    allowed = _requirement_names(project["dependencies"]) | _requirement_names(project["optional-dependencies"]["web"])
    web_dirs = [str(p.relative_to(ROOT)) for p in (ROOT / "mergehub").iterdir()
                if p.is_dir() and str(p.relative_to(ROOT)) not in COMMAND_LINE_PACKAGES and p.name != "__pycache__"]
    imports = _third_party_imports([*web_dirs, "jobs"])
    # transformers brings huggingface_hub with it; the web app lists it itself all the same
    missing = {m: sorted(files) for m, files in imports.items()
               if _distribution(m) not in allowed and m not in OPTIONAL}
    assert not missing, f"imported by the web app but in neither dependency list: {missing}"


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["eval", "--help"], ["family", "train", "--help"]])
def test_the_command_line_runs_without_django(argv):
    """Django (and the web stack) made unimportable: the command line still starts."""
    code = ("import sys\n"
            "for name in ('django', 'rest_framework', 'django_q', 'plotly', 'markdown_it'):\n"
            "    sys.modules[name] = None\n"
            "from mergehub.engine.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: mergehub" in result.stdout
