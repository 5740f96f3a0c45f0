import os
import sys
from pathlib import Path

import pytest

from ncawss.environment import LOOPBACK_ONLY

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "zheng2018"
sys.path.insert(0, str(ROOT / "bench"))  # the reference-style NCA lives beside its benchmark
# Ray clusters that tests start in this process or with `ray start` take loopback as their node
# address, as a sweep job's own local Ray does (Ray reads this when first imported).
os.environ.setdefault(LOOPBACK_ONLY, "0")
# Without CUDA, the Triton step kernel runs under Triton's interpreter (read when a kernel is defined).
if os.environ.get("TRITON_INTERPRET") is None:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir for one test; the Ray processes it started end with it."""
    from sweeps import private_ray_tmp

    with private_ray_tmp() as path:
        yield path


@pytest.fixture(scope="session")
def small_synthetic():
    from ncawss import make_synthetic
    return make_synthetic(n=40, size=24, seed=3)
