"""The Ray a sweep runs on: started here (a local Ray, its workers the MPS daemon's clients where asked)
or joined (a cluster's address, or a caller's own Ray); its size; what every node must see.

    info = start_ray(address, dashboard, plan)      # ray.init's info, None for a caller's own Ray
    cpus, gpus = cluster_size()
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sweep.console import exposure_warning
from sweep.errors import UsageError
from sweep.plan import SweepPlan


def cluster_size() -> tuple[int, int]:
    """The Ray cluster's CPUs and GPUs."""
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 0)), int(resources.get("GPU", 0))


def check_visible_everywhere(paths: dict[str, Path]) -> None:
    """On a multi-node cluster, trials read the feature cache and write checkpoints on whatever
    node they land on: both must be on storage every node mounts. Checked on each alive node."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    for node in nodes:
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        for flag, path in paths.items():
            if "://" in str(path):  # an object-store URI: Tune reaches it from every node itself
                continue
            exists_there = ray.remote(num_cpus=0)(os.path.exists).options(scheduling_strategy=pin)
            if not ray.get(exists_there.remote(str(path))):
                raise UsageError(
                    f"{flag} {path.parent if flag == '--cache' else path} is not visible on Ray node "
                    f"{node['NodeManagerAddress']} ({node['NodeID'][:8]}): on a cluster, put it on a "
                    "filesystem every node mounts (NFS, a shared volume); --storage may also be an "
                    "object-store URI (s3://...)."
                )


def start_ray(
    address: str | None,
    dashboard: bool,
    plan: SweepPlan,
    dashboard_host: str = "127.0.0.1",
    worker_env: dict | None = None,
    verbose: bool = False,
):
    """Join the caller's Ray, or the cluster at `address` (or RAY_ADDRESS), or start a local Ray whose
    workers get `worker_env` (the MPS daemon's). Returns ray.init's info (None for a caller's own Ray).
    UsageError, in one line, where nothing answers at the address or the plan's GPUs are missing."""
    level = logging.INFO if verbose else logging.WARNING
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # a caller (a test, a notebook) brought its own Ray
        info = None
    elif address:
        try:
            check_answers(address)  # Ray itself retries a dead address for minutes
            info = ray.init(address=address, logging_level=level)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            raise UsageError(
                f"cannot join the Ray cluster at {address}: {str(err)[:300]}. Check the address (ray status "
                "on the head prints it); with token authentication (Ray's default since 2.59) export "
                "RAY_AUTH_MODE=token and make the cluster's token available (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN)."
            ) from None
    else:
        # UIs bind to loopback unless asked: Ray's dashboard runs code for whoever reaches it.
        warning = exposure_warning("Ray's dashboard", dashboard_host) if dashboard else None
        if warning:
            print(warning, file=sys.stderr)
        runtime_env = {"env_vars": worker_env} if worker_env else None  # MPS: the workers are its clients
        info = ray.init(
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            runtime_env=runtime_env,
            logging_level=level,
            _system_config=ray_system_config(runtime_env is not None, plan.without),
        )
    if plan.gpus_per_trial > 0 and not ray.cluster_resources().get("GPU"):
        raise UsageError(f"--gpus-per-trial {plan.gpus_per_trial:g} but the Ray cluster has no GPUs.")
    return info


def ray_system_config(job_runtime_env: bool, without=()) -> dict:
    """The local Ray's settings. As the driver connects, Ray prestarts one idle worker process per CPU
    for the jobs without a runtime_env; a job with one (--mps: the daemon's variables) never runs on
    them, and on an H200 machine 16 of them start just as Tune starts the trials' workers, beside their
    imports. So a sweep whose workers have a runtime_env starts none (--without lean-ray-start: it does)."""
    if job_runtime_env and "lean-ray-start" not in without:
        return {"prestart_worker_first_driver": False}
    return {}


def check_answers(address: str, timeout_s: float = 5.0) -> None:
    """ConnectionError unless something answers at a host:port `address` ("auto", ray://... pass)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {address} within {timeout_s:g} s ({err})") from None
