import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "zheng2018"
sys.path.insert(0, str(ROOT / "bench"))  # the reference-style NCA lives beside its benchmark
# Ray clusters that tests start in this process or with `ray start` take loopback as their node
# address, as a sweep job's own local Ray does (Ray reads this when first imported).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOOPBACK_ONLY, "0")


@pytest.fixture(scope="session")
def small_synthetic():
    from ncawss import make_synthetic
    return make_synthetic(n=40, size=24, seed=3)
