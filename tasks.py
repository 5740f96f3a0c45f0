#!/usr/bin/env python3
"""Set up the project's virtual environment (.venv) and run the quick start or the tests.

    python3 tasks.py quickstart   # a small NCA-WSS sweep (Ray Tune + Train, MLflow) on synthetic data
    python3 tasks.py test         # the test suite
    python3 tasks.py lint         # ruff, with the rules in pyproject.toml

Needs only Python 3.11+. The environment is created on first use and reinstalled
when pyproject.toml changes. NCAWSS_TORCH overrides the torch requirement
(default torch==2.13.0; e.g. a CUDA build's index on a GPU machine).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".ncawss-installed"


def run(*command: str | Path) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, cwd=ROOT)


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        run(sys.executable, "-m", "venv", VENV)
    pip = (PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    # torch first and pinned: a bare requirement may pull a multi-GB CUDA build.
    run(*pip, os.environ.get("NCAWSS_TORCH", "torch==2.13.0"))
    run(*pip, "-e", ".[test]")
    STAMP.write_text(wanted)


def main() -> int:
    tasks = {
        "quickstart": [PYTHON, "jobs/cv_sweep.py"],
        "test": [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        "lint": [PYTHON, "-m", "ruff", "check", "--no-cache", "."],
    }
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(__doc__)
        return 2
    ensure_venv()
    return subprocess.run([str(c) for c in tasks[sys.argv[1]]] + sys.argv[2:], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
