"""Fixtures of the end-to-end tests: the package installed into a separate virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT

# What `pip install <repository>` reads to build the distribution.
DISTRIBUTION_FILES = ("pyproject.toml", "README.md", "jwt_guide")
# A host app's own modules, named like the project's former top-level ones.
HOST_CONFIG = 'class AppError(Exception):\n    pass\n\n\nSETTING = "the host config"\n'
HOST_WEB = 'def render(text):\n    return "<p>" + text + "</p>"\n'


@pytest.fixture(scope="session")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new virtual environment into which ``pip install`` put this project,
    as a service would install it: a real wheel, not an editable link to the repository.

    The runtime dependencies are not downloaded again: a .pth file adds this environment's
    site-packages behind the new one's (a path in a .pth is not scanned for .pth files, so
    the repository's editable link does not come along).
    """
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy: building in the repository would leave build/ there
    source.mkdir()
    for name in DISTRIBUTION_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "runtime-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", "--no-deps", str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return python


@pytest.fixture
def host_dir(tmp_path: Path, session_keys: Path) -> Path:
    """A host app's folder: its own config.py and web.py, and a copy of the session's keys."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "config.py").write_text(HOST_CONFIG)
    (host / "web.py").write_text(HOST_WEB)
    shutil.copytree(session_keys, host / "keys")
    return host
