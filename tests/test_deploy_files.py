"""cluster/ and docker/ files: the checks that run without a cloud, a Kubernetes cluster or Docker."""

import shlex
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sweep.launch import parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_autoscaler_config_passes_rays_own_validation():
    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's JSON schema + its consistency checks
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_rayjob_runs_a_valid_launch_command_with_token_auth():
    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "sweep.launch"]
    args = parse_args(words[3:])  # every flag in the manifest is one the launcher knows
    assert (args.space, args.preset, args.storage) == ("beta_dim_steps", "paper", "/shared/sweep-results")
    workers = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_compose_binds_loopback_and_pins_images():
    compose = yaml.safe_load((ROOT / "docker" / "compose.mlflow.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "mlflow"}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
    server = " ".join(services["mlflow"]["command"])
    assert (
        "postgresql://" in server
        and "--artifacts-destination s3://" in server
        and "--serve-artifacts" in server
    )
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_are_pinned(name):
    text = (ROOT / "docker" / name).read_text()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest")
    if name == "Dockerfile":
        assert "pip install --no-cache-dir ." in text and "USER 1000:1000" in text
