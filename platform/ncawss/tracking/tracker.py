"""MLflow tracking of sweeps: a parent run per sweep, a nested run per trial.

Only MlflowClient (no fluent global state): every call names its run. The
tracker keeps no client when pickled, so it can travel with Ray Tune's
experiment state and continue the same parent run after a resume.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient

from ..method.scoring.scores import fold_key
from . import TrackingError

if TYPE_CHECKING:
    from .mlflow_model import RegisteredModel

log = logging.getLogger(__name__)

TRIAL_TAG = "ncawss.trial_id"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment of this kind on its runs table, not on the GenAI overview.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DIGEST_LENGTH = 36  # MLflow's limit on a dataset digest
MODEL_METRICS = ("best_", "holdout_")  # the parent run's metrics that describe its registered model


class SweepTracker:
    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None, parent_run_id: str | None = None,
                 dataset: dict[str, str] | None = None):
        """`dataset`: {name, fingerprint, uri} of the training data, logged as every run's input."""
        self.uri, self.experiment, self.artifact_root = uri, experiment, artifact_root
        self.parent_run_id, self.dataset = parent_run_id, dataset
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def check(self) -> None:
        """Fail fast, before any training, where the store cannot be reached."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # MLflow raises several types for an unreachable store
            raise TrackingError(f"MLflow tracking store {self.uri} is unreachable: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None

    def ensure_experiment(self) -> str:
        if self.experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_root)
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        return self.experiment_id

    def log_dataset(self, run_id: str) -> None:
        """The training data as the run's input: name, digest (the fingerprint, cut to MLflow's
        36 characters; the whole one in the source), source URI."""
        if self.dataset is None:
            return
        source = json.dumps({"uri": self.dataset["uri"], "fingerprint": self.dataset["fingerprint"]})
        entity = DatasetEntity(name=self.dataset["name"], digest=self.dataset["fingerprint"][:DIGEST_LENGTH],
                               source_type="ncawss", source=source)
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])

    # --- sweep --------------------------------------------------------------

    def start_sweep(self, params: dict[str, Any], tags: dict[str, str], files: dict[str, str]) -> str:
        """Create the parent run, or continue it (status RUNNING again) if one is known."""
        if self.parent_run_id is not None:
            self.client.update_run(self.parent_run_id, status="RUNNING")
            return self.parent_run_id
        run = self.client.create_run(self.ensure_experiment(), run_name=self.experiment, tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.log_dataset(self.parent_run_id)
        for name, text in files.items():
            self.client.log_text(self.parent_run_id, text, name)
        return self.parent_run_id

    def finish_sweep(self, metrics: dict[str, float], files: dict[str, str | bytes],
                     tags: dict[str, str] | None = None, model_id: str | None = None,
                     status: str = "FINISHED") -> None:
        """The parent run's closing metrics, files and tags, and its status (KILLED: interrupted);
        with `model_id` (the registered LoggedModel), the best trial's and the holdout's metrics
        are linked to the model too."""
        linked = {k: v for k, v in metrics.items() if model_id and k.startswith(MODEL_METRICS)}
        self.log_metrics(self.parent_run_id, {k: v for k, v in metrics.items() if k not in linked})
        self.log_metrics(self.parent_run_id, linked, model_id=model_id)
        for key, value in (tags or {}).items():
            self.client.set_tag(self.parent_run_id, key, value)
        for name, content in files.items():
            self.log_file(self.parent_run_id, name, content)
        self.client.set_terminated(self.parent_run_id, status=status)

    def fail_sweep(self) -> None:
        """Mark the parent run and every trial run still RUNNING as FAILED."""
        if self.parent_run_id is None:
            return
        for run in self.trial_runs():
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="FAILED")
        self.client.set_terminated(self.parent_run_id, status="FAILED")

    # --- trials -------------------------------------------------------------

    def trial_runs(self) -> list:
        return self.client.search_runs([self.ensure_experiment()],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                       max_results=10000)

    def trial_run_id(self, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.ensure_experiment()],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' "
                                                     f"and tags.`{TRIAL_TAG}` = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def start_trial(self, trial_id: str, params: dict[str, Any]) -> str:
        """The trial's nested run; a restarted trial continues its run."""
        run_id = self.trial_run_id(trial_id)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.ensure_experiment(), run_name=f"trial-{trial_id}",
                                     tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.log_dataset(run.info.run_id)
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Metrics of a run; with `model_id`, linked to that LoggedModel and to the training data."""
        data = {"dataset_name": self.dataset["name"], "dataset_digest": self.dataset["fingerprint"][:DIGEST_LENGTH]} \
            if model_id and self.dataset else {}
        values = [Metric(k, float(v), 0, step, model_id=model_id, **data) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            self.client.log_batch(run_id, metrics=values)

    def log_file(self, run_id: str, name: str, content: str | bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifact(run_id, str(path), artifact_path=str(Path(name).parent) if "/" in name else None)

    def log_directory(self, run_id: str, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path=artifact_path)

    def note_trial(self, run_id: str, note: str | None, tags: dict[str, str]) -> None:
        """Tags and a description (MLflow's note, shown on the run's page; None keeps it) on a trial's run."""
        for key, value in {**tags, **({"mlflow.note.content": note} if note is not None else {})}.items():
            self.client.set_tag(run_id, key, value)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which a run holds metric `key`."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def tag_trials(self, tags: dict[str, dict[str, str]]) -> None:
        """Tags on trial runs, by trial id (e.g. whether a trial is on the Pareto front)."""
        runs = {run.data.tags.get(TRIAL_TAG): run.info.run_id for run in self.trial_runs()}  # one search for all
        for trial_id, trial_tags in tags.items():
            for key, value in trial_tags.items() if trial_id in runs else ():
                self.client.set_tag(runs[trial_id], key, value)

    def finish_trial(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    # --- other runs -----------------------------------------------------------

    def log_run(self, name: str, tags: dict[str, str], metrics: dict[str, float],
                files: dict[str, str | bytes]) -> str:
        """One finished run in the experiment, e.g. a cross-domain evaluation; returns its id."""
        run_id = self.client.create_run(self.ensure_experiment(), run_name=name, tags=tags).info.run_id
        self.log_metrics(run_id, metrics)
        for file_name, content in files.items():
            self.log_file(run_id, file_name, content)
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def register_model(self, model_dir: Path, example: bytes, params: dict[str, Any]) -> RegisteredModel:
        """The fold ensemble in `model_dir` as a LoggedModel of the parent run (with `params`, e.g.
        the configuration), registered under the sweep's name."""
        from .mlflow_model import log_registered_model

        return log_registered_model(self.client, self.parent_run_id, model_dir, example, self.experiment,
                                    {k: str(v)[:6000] for k, v in params.items()})

    def download_fold_files(self, run_id: str, destination: str) -> Path:
        """A trial run's logged fold files (weights, per-image results) in a local folder."""
        try:
            return Path(self.client.download_artifacts(run_id, "folds", destination))
        except Exception as exc:  # unknown run id, missing artifacts, unreachable store
            raise TrackingError(f"run {run_id} in {self.uri}: cannot fetch its fold weights "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def log_history(tracker: SweepTracker, run_id: str, fold: int, history: list[dict]) -> None:
    """Per-epoch curves of one fold, as metrics fold{fold}_{name} with step = epoch."""
    metrics = [Metric(fold_key(fold, k), float(v), 0, int(row["epoch"]))
               for row in history for k, v in row.items() if k != "epoch"]
    for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
        tracker.client.log_batch(run_id, metrics=metrics[start:start + 900])

