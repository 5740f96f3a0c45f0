import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "zheng2018"
sys.path.insert(0, str(ROOT / "bench"))  # the reference-style NCA lives beside its benchmark


@pytest.fixture(scope="session")
def small_synthetic():
    from ncawss import make_synthetic
    return make_synthetic(n=40, size=24, seed=3)
