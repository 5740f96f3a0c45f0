"""The environment variables the jobs set for the libraries they drive, in one place, and the
process's memory handed back after reading a dataset (return_freed_memory).

Ray reads its settings when first imported and MLflow at each request, so a job calls one of
these first, before anything imports Ray. A user's own value stands, except Train's API
version, which the sweep is written for.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

# Ray's switch for multi-node clusters on Windows and macOS: "0" makes a Ray that the job starts
# itself take 127.0.0.1 as its node address, so that none of its servers listens beyond
# loopback (left to itself, Ray 2.60 binds its core services to every interface). A job that
# joins a cluster (RAY_ADDRESS, ray job submit) finds its node by ID and is not affected.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
MLFLOW_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"

JOB_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bars in a job's output
}
SWEEP_DEFAULTS = {
    **JOB_DEFAULTS,
    LOOPBACK_ONLY: "0",
    # Save Tune's experiment state at every step, so a finished trial is known as finished to a
    # resumed sweep even when the driver dies right after it.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # Ray Train's controller polls its workers every 2 s: each report and a trial's end waited up
    # to that long (4 s a trial in the smoke sweep). Train hands it on to its controllers.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # An actor per running trial (about 0.1 GB) that tells workers of a node's coming drain
    # through ray.train.get_preemption_info, which the fold workers never read: they checkpoint
    # every checkpoint_every epochs, and a lost node's folds resume from there.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # During a sweep MLflow retries with exponential backoff (its own: 7 retries, about
    # 4 minutes) to ride out a tracking server restart; each request gives up after 10 s.
    MLFLOW_RETRIES: "7",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
SWEEP_REQUIRED = {"RAY_TRAIN_V2_ENABLED": "1"}  # the Train API the fold workers are written for


def for_job() -> None:
    """Defaults of a job that may talk to MLflow (evaluate.py, predict.py)."""
    for key, value in JOB_DEFAULTS.items():
        os.environ.setdefault(key, value)


def for_sweep() -> None:
    """Defaults of a sweep job; call before Ray is imported."""
    for key, value in SWEEP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(SWEEP_REQUIRED)


@contextlib.contextmanager
def tracking_fails_fast() -> Iterator[None]:
    """No MLflow retries inside: an unreachable store fails at once, before any training."""
    retries = os.environ.get(MLFLOW_RETRIES)
    os.environ[MLFLOW_RETRIES] = "0"
    try:
        yield
    finally:
        if retries is None:
            del os.environ[MLFLOW_RETRIES]
        else:
            os.environ[MLFLOW_RETRIES] = retries


def return_freed_memory() -> None:
    """Hand the memory freed after reading a dataset back to the system. Decoding images leaves
    Arrow's allocator and glibc's holding freed pages (after reading 4,000 crops of 256 px and
    dropping them: 0.72 GB held, 0.14 GB after this), which a sweep's driver would otherwise
    keep through every trial."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)
