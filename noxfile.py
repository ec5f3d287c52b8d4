"""Meadow's checks as nox sessions; `bash scripts/test.sh` runs them all.

    nox -s lint                    # ruff check + ruff format --check
    nox -t typecheck               # mypy: typecheck-core, typecheck-airflow, ...
    nox -s core -- -k cli -x       # the core suite (arguments go to pytest)
    nox -s adapter-prefect         # one adapter's suite in its own venv (-t adapters: all)

Environments are built with uv from the machine's python3: `.venv` for the core (what
`scripts/example.sh` uses too) and `.venvs/NAME` for each adapter, each with the
workspace's distributions installed editable and the part's `dev` group from its
pyproject.toml (for an adapter: its pinned orchestrator, its tests' needs and mypy).
There is deliberately no uv.lock (see the comment on [tool.uv] in pyproject.toml).
The core suite needs the services `scripts/test.sh` starts (docker daemon, registry);
alone, their tests skip or fail as they would without them.

If MEADOW_JUNIT_DIR is set, each pytest run writes its report to DIR/PART.xml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent
ADAPTERS = ("airflow", "prefect", "dagster")

nox.options.default_venv_backend = "none"  # uv builds the environments (below)
nox.options.sessions = ["lint", "typecheck-core", "core"]  # `nox -t typecheck`, `nox -t adapters`
nox.options.error_on_missing_interpreters = True


def _env_dir(part: str) -> Path:
    return ROOT / ".venv" if part == "core" else ROOT / ".venvs" / part


def _install(session: nox.Session, part: str) -> Path:
    """Build PART's environment (kept if its interpreter still runs) and install into it
    the workspace's own distributions, editable, plus PART's `dev` group; returns its
    bin directory. A pin that cannot be installed fails the session."""
    env = _env_dir(part)
    python = env / "bin" / "python"
    if not _runs(python):
        session.run_install(
            "uv",
            "venv",
            "--quiet",
            "--clear",
            "--python",
            _system_python(),
            str(env),
            external=True,
        )
    project = ROOT if part == "core" else ROOT / "integrations" / part
    editables = [ROOT, ROOT / "devcloud", *([project] if part != "core" else [])]
    overrides = Path(session.create_tmp()) / "overrides.txt"
    overrides.write_text("\n".join(_workspace_uv()["override-dependencies"]) + "\n")
    session.run_install(
        "uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        str(python),
        *(arg for path in editables for arg in ("-e", str(path))),
        "--group",
        f"{project / 'pyproject.toml'}:dev",
        "--override",
        str(overrides),
        external=True,
    )
    return env / "bin"


def _system_python() -> str:
    """The interpreter environments are built from: the machine's python3 (nox's own
    interpreter is a venv's; its base is what that venv was built from)."""
    return os.environ.get("UV_PYTHON") or shutil.which("python3", path=_outer_path()) or "python3"


def _outer_path() -> str:
    """PATH without venvs' bin directories (nox runs from one)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(p for p in parts if not (Path(p).parent / "pyvenv.cfg").exists())


def _runs(python: Path) -> bool:
    try:
        return subprocess.run([python, "-c", ""], capture_output=True).returncode == 0
    except OSError:
        return False


def _workspace_uv() -> dict[str, Any]:
    """[tool.uv] of the root pyproject.toml: its override-dependencies apply to every
    environment (uv pip does not read them from there itself)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["uv"])


def _pytest(session: nox.Session, part: str, bin_dir: Path, *args: str) -> None:
    """pytest from the repository root (one configuration, in pyproject.toml, for all
    suites); "no tests collected" (exit 5) fails the session like a failed test."""
    junit_dir = os.environ.get("MEADOW_JUNIT_DIR") or session.create_tmp()
    report = Path(junit_dir) / f"{part}.xml"
    report.unlink(missing_ok=True)
    session.chdir(ROOT)
    ran = session.run(
        str(bin_dir / "python"),
        "-m",
        "pytest",
        "-q",
        f"--junitxml={report}",
        *args,
        success_codes=[0, 5],
        external=True,
    )
    if ran is None:
        return  # --install-only
    if not report.exists() or _count_tests(report) == 0:
        session.error(f"pytest collected no tests for '{part}' (exit 5); that counts as a failure")


def _count_tests(report: Path) -> int:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return sum(int(suite.get("tests", 0)) for suite in suites)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check with the pinned ruff (the core's dev group)."""
    bin_dir = _install(session, "core")
    session.chdir(ROOT)
    session.run(str(bin_dir / "ruff"), "check", ".", external=True)
    session.run(str(bin_dir / "ruff"), "format", "--check", ".", external=True)


def _typecheck_session(part: str) -> None:
    @nox.session(name=f"typecheck-{part}", tags=["typecheck"])
    def typecheck(session: nox.Session) -> None:
        """mypy in this part's own environment, with the configuration in its
        pyproject.toml (the core: strict, meadow_core and the dev cloud)."""
        bin_dir = _install(session, part)
        session.chdir(ROOT if part == "core" else ROOT / "integrations" / part)
        session.run(str(bin_dir / "mypy"), external=True)


@nox.session
def core(session: nox.Session) -> None:
    """The core suite; session arguments go to pytest (e.g. `-- -k cli -x`)."""
    bin_dir = _install(session, "core")
    _pytest(session, "core", bin_dir, "tests", *session.posargs)


def _adapter_session(name: str) -> None:
    @nox.session(name=f"adapter-{name}", tags=["adapters"])
    def adapter(session: nox.Session) -> None:
        """One adapter's suite in its own environment. The orchestrator's state (config,
        sqlite database, ...) goes to a throwaway home, not to $HOME."""
        bin_dir = _install(session, name)
        home = Path(session.create_tmp()) / "homes"
        for variable in ("AIRFLOW_HOME", "PREFECT_HOME", "DAGSTER_HOME"):
            directory = home / variable.split("_")[0].lower()
            directory.mkdir(parents=True, exist_ok=True)
            session.env[variable] = str(directory)
        _pytest(session, name, bin_dir, f"integrations/{name}/tests", *session.posargs)


for _part in ("core", *ADAPTERS):
    _typecheck_session(_part)
for _name in ADAPTERS:
    _adapter_session(_name)
