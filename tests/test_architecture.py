"""The import rules of docs/architecture.md, checked on the source (``ast``; nothing is imported):

- ``mergehub.ui`` (page helpers) imports no domain app;
- outside the engine, code imports the engine only through ``mergehub.engine.api``;
- no module under mergehub/ imports ``bench`` (the benchmark is not shipped);
- the engine imports neither Django nor any other part of MergeHub (bar the exception listed);
- ``mergehub.remote`` (the API's command-line client) imports neither Django nor torch;

and, in a fresh interpreter, setting Django up and importing every URL module leaves torch
unimported, as do the pages that show results (a web process imports it when a page first needs
the engine: the merge form).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.publishing.conftest import merged_run  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mergehub"

# The Django apps and libraries of mergehub/ that hold domain code (everything but ui).
DOMAIN = ("accounts", "api", "audit", "dashboard", "evaluation", "family", "jobs", "publishing",
          "registry", "reviews", "runs", "scoring", "demo", "remote")
# Modules outside the engine allowed to import an engine module other than api, and why.
ENGINE_INTERNALS_ALLOWED: dict[str, str] = {}
# mergehub/ modules that are not an app's: settings, URLconf, WSGI, the package's version.
PROJECT_MODULES = {"mergehub/__init__.py", "mergehub/settings.py", "mergehub/urls.py", "mergehub/wsgi.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved), at any depth of
    the file: a function's lazy import counts as much as one at the top."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import mod`
    return found


def sources(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "migrations" not in p.parts or under.name != "mergehub")


def offenders(paths, bad) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {name}" for p in paths for name in sorted(imports_of(p)) if bad(name)]


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    probe = PACKAGE / "ui" / "templatetags" / "mergehub.py"
    assert "mergehub.ui.formatting" in imports_of(probe)  # `from ..formatting import ...`
    assert "mergehub.engine.planner" in imports_of(PACKAGE / "engine" / "api.py")  # inside a function


def test_ui_imports_no_domain_app():
    assert offenders(sources(PACKAGE / "ui"),
                     lambda name: any(is_within(name, f"mergehub.{app}") for app in DOMAIN)) == []


def test_only_the_engine_api_is_imported_from_outside_the_engine():
    outside = [p for p in sources(PACKAGE) if not is_within(module_name(p), "mergehub.engine")]
    outside += sources(ROOT / "jobs")

    def internal(path):
        return lambda name: (is_within(name, "mergehub.engine") and name != "mergehub.engine"
                             and not is_within(name, "mergehub.engine.api")
                             and str(path.relative_to(ROOT)) not in ENGINE_INTERNALS_ALLOWED)

    found = [line for p in outside for line in offenders([p], internal(p))]
    assert found == []


def test_no_module_under_mergehub_imports_bench():
    assert offenders(sources(PACKAGE) + sources(ROOT / "jobs"), lambda name: is_within(name, "bench")) == []


# Engine modules allowed to import a non-Django part of MergeHub, and why.
ENGINE_REACHES_OUT: dict[str, tuple[tuple[str, ...], str]] = {
    "mergehub/engine/cli.py": (("mergehub.remote", "mergehub.scoring", "mergehub.family"),
                               "the `mergehub` command is the one front door of the no-Django tools: "
                               "it dispatches `remote`, `eval` and `train` to their packages, lazily"),
}


def test_the_engine_imports_neither_django_nor_the_rest_of_mergehub():
    found = []
    for path in sources(PACKAGE / "engine"):
        allowed = ENGINE_REACHES_OUT.get(str(path.relative_to(ROOT)), ((), ""))[0]

        def bad(name):
            return (is_within(name, "django") or is_within(name, "rest_framework")
                    or (is_within(name, "mergehub") and not is_within(name, "mergehub.engine")
                        and name not in ("mergehub", "mergehub.__version__")
                        and not any(is_within(name, package) for package in allowed)))

        found += offenders([path], bad)
    assert found == []


def test_the_remote_client_imports_neither_django_nor_torch():
    def bad(name):
        return any(is_within(name, top) for top in ("django", "rest_framework", "torch"))

    assert offenders(sources(PACKAGE / "remote"), bad) == []


def test_every_app_module_is_in_a_known_place():
    """A new top-level package under mergehub/ must be placed in the rules above (DOMAIN, or ui,
    or the engine)."""
    tops = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py")}
    tops -= {"ui", "engine", *DOMAIN, *(Path(m).name for m in PROJECT_MODULES)}
    assert tops == set()


def test_a_web_process_starts_without_torch():
    """scripts/measure_startup.py's child: Django set up, the WSGI app built, every URL module
    imported, in a fresh interpreter; torch, numpy and safetensors stay unimported."""
    spec = importlib.util.spec_from_file_location("measure_startup", ROOT / "scripts" / "measure_startup.py")
    measure_startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_startup)
    assert measure_startup.measure(runs=1)["heavy"] == []


PAGES = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
username, token, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
client = Client()
client.force_login(get_user_model().objects.get(username=username))
result = {}
for url in urls:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if url.startswith("/api/") else {}
    result[url] = [client.get(url, **headers).status_code, "torch" in sys.modules]
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_pages_that_show_results_leave_torch_unimported(merged_run, alice, acme):
    """A web worker's first views of the dashboard, lists, a run's report, a comparison, the team
    pages and the API's reads do not import torch; only pages that describe or plan a merge (the
    merge form) need the engine."""
    from mergehub.api.tokens import create_token
    from mergehub.runs.models import MergeRun
    from tests.jobs.stack import stack_env

    run, base = merged_run, merged_run.base
    other = MergeRun.objects.create(team=acme, author=alice, name="queued", method="ties", budget="0.5", base=base)
    _, token = create_token(user=alice, team=acme, name="probe", can_write=False, expires_days=None, by=alice)
    pages = ["/", "/runs/", "/runs/?method=ties", f"/runs/{run.pk}/", f"/runs/compare/?ids={run.pk},{other.pk}",
             f"/runs/{run.pk}/config.yaml", "/checkpoints/", f"/checkpoints/{base.pk}/", "/evaluation/tasks/",
             "/evaluation/sweeps/", "/teams/", f"/teams/{acme.slug}/", f"/teams/{acme.slug}/audit/",
             "/api/v1/runs/", f"/api/v1/runs/{run.pk}/", "/api/v1/checkpoints/"]
    out = subprocess.run([sys.executable, "-c", PAGES, alice.username, token, *pages, "/runs/new/"], cwd=ROOT,
                         env=stack_env(), capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert {url: status for url, (status, _) in seen.items()} == {url: 200 for url in [*pages, "/runs/new/"]}
    assert [url for url in pages if seen[url][1]] == []
    # the merge form does import it (it lists each operator's parameters), which shows the probe sees one
    assert seen["/runs/new/"][1]
