"""The lock files: the runtime one (what the image installs) holds exactly what flashdeal runs on."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Test, lint and benchmark tools: none of them may reach the production image.
NOT_AT_RUNTIME = {"pytest", "playwright", "schemathesis", "hypothesis", "ruff", "locust", "matplotlib", "numpy",
                  "psycopg2-binary", "gevent", "pyyaml", "psutil"}  # fmt: skip


def locked(name: str) -> dict[str, str]:
    """A lock file's pins: canonical name -> the line."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out[canonicalize_name(re.split(r"[=<>\[ ]", line)[0])] = line
    return out


def closure(requirements: list[str]) -> set[str]:
    """Every distribution these requirements pull in (with their extras), as installed in this environment."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen and set(req.extras) <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | set(req.extras)
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker is None or any(spec.marker.evaluate({"extra": e}) for e in seen[name] | {""}):
                todo.append(spec)
    return set(seen)


def test_the_runtime_lock_is_the_tree_of_the_dependencies_and_nothing_else() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = locked("requirements.lock")
    assert set(runtime) == closure(project["dependencies"])
    assert not NOT_AT_RUNTIME & set(runtime), NOT_AT_RUNTIME & set(runtime)


def test_the_dev_lock_adds_the_test_and_bench_tools_and_repeats_nothing() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert not set(runtime) & set(dev)
    extras = [r for group in ("dev", "bench") for r in project["optional-dependencies"][group]]
    assert closure(extras) <= set(runtime) | set(dev)
    assert set(dev) >= NOT_AT_RUNTIME


def test_the_image_installs_the_runtime_lock_alone_and_make_installs_both() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "requirements-dev.lock" not in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements.lock -r requirements-dev.lock" in makefile
