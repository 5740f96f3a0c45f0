import copy
import re
import tomllib

import pytest
import yaml

from conftest import ROOT


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_own_schema_validation(cluster):
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))  # offline: no cloud credentials needed


def test_an_invalid_cluster_yaml_is_rejected_by_the_same_validation(cluster):
    import jsonschema
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["max_wokers"] = 8
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_ray_pin_matches_pyproject(cluster):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = [re.search(r"==([\w.]+)", d).group(1) for d in pyproject["project"]["dependencies"]
              if d.startswith("ray[")]
    setup = " ".join(cluster["setup_commands"])
    assert pinned and re.findall(r'ray\[[^\]]*\]==([\w.]+)', setup) == pinned


def test_head_runs_mlflow_and_gives_jobs_its_tracking_uri(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "mlflow server" in head and "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head
    workers = cluster["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["node_config"]["InstanceType"].startswith("g")


def test_every_node_starts_ray_with_token_auth_and_services_bind_loopback(cluster):
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"  # one token, every node
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server --host 127.0.0.1" in head
    assert "0.0.0.0" not in head
