"""deploy/ agrees with the presets: the GPU-node preset's CPU and GPU budget fits what the KubeRay
worker pods request, every manifest names the same GPU as the cluster launcher's instance type,
the RayJob starts as many nodes as the preset's concurrencies assume, the image installs every
extra the entrypoints use, and ``submit.sh`` passes only what the job needs (dry run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipelines.build import RAY_DATA_TASK_CPUS, load_config
from pipelines.config import PRESETS
from pipelines.steps import plan_steps

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

#: GPUs per node and the product label (nvidia.com/gpu.product) of the instance types we name
INSTANCES = {
    "p4d.24xlarge": {"gpus": 8, "vcpus": 96, "product": "NVIDIA-A100-SXM4-40GB"},
    "p4de.24xlarge": {"gpus": 8, "vcpus": 96, "product": "NVIDIA-A100-SXM4-80GB"},
    "p5.48xlarge": {"gpus": 8, "vcpus": 192, "product": "NVIDIA-H100-80GB-HBM3"},
}


def _yaml(rel: str):
    return yaml.safe_load((DEPLOY / rel).read_text())


def _cpus(q: str | float) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def preset_budget(path: Path) -> tuple[float, float]:
    """(CPUs, GPUs) a preset asks of the cluster: every stage's pool or task slots at once, and one
    of Ray Data's own tasks."""
    cfg = load_config(path)
    steps = plan_steps(cfg, "paper", None)
    res = cfg.resources
    used = {step.name for step in steps} | {"read", "write"}
    cpus = sum(getattr(res, n).concurrency * getattr(res, n).num_cpus for n in used if hasattr(res, n))
    gpus = sum(getattr(res, n).concurrency * getattr(res, n).num_gpus for n in used if hasattr(res, n))
    return cpus + RAY_DATA_TASK_CPUS, gpus


def worker_groups() -> dict[str, dict]:
    """Manifest -> its GPU worker group (RayCluster, and the RayJob's cluster)."""
    rc = _yaml("kuberay/raycluster.yaml")["spec"]
    job = _yaml("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
    return {"raycluster.yaml": rc["workerGroupSpecs"][0], "rayjob.yaml": job["workerGroupSpecs"][0]}


def test_gpu_node_preset_fits_a_worker_pod():
    cpus, gpus = preset_budget(PRESETS / "gpu-node.yaml")
    for name, group in worker_groups().items():
        (container,) = group["template"]["spec"]["containers"]
        req, lim = container["resources"]["requests"], container["resources"]["limits"]
        assert req == lim, f"{name}: requests and limits differ (Ray reads the limits)"
        pod_cpus, pod_gpus = _cpus(req["cpu"]), int(req["nvidia.com/gpu"])
        assert cpus <= pod_cpus, f"{name}: gpu-node.yaml budgets {cpus:g} CPUs, a worker pod requests {pod_cpus:g}"
        assert gpus == pod_gpus, f"{name}: gpu-node.yaml asks for {gpus:g} GPUs, a worker pod has {pod_gpus}"


def test_rayjob_starts_the_nodes_the_preset_assumes():
    """The preset's concurrencies count over the whole cluster and lay out one node: the RayJob
    (whose entrypoint uses it) starts one worker pod."""
    job = _yaml("kuberay/rayjob.yaml")["spec"]
    assert "pipelines/presets/gpu-node.yaml" in job["entrypoint"]
    _, gpus = preset_budget(PRESETS / "gpu-node.yaml")
    group = worker_groups()["rayjob.yaml"]
    per_pod = int(group["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"])
    assert group["replicas"] * per_pod == gpus, (group["replicas"], per_pod, gpus)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_manifests_name_the_cluster_launchers_gpu():
    cluster = _yaml("cluster.yaml")
    types = [t["node_config"]["InstanceType"] for t in cluster["available_node_types"].values()]
    gpu_types = [t for t in types if t in INSTANCES]
    assert len(gpu_types) == 1, f"cluster.yaml's GPU worker type is not one of {sorted(INSTANCES)}: {types}"
    instance = INSTANCES[gpu_types[0]]
    for name, group in worker_groups().items():
        spec = group["template"]["spec"]
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == instance["product"], name
        (container,) = spec["containers"]
        assert int(container["resources"]["requests"]["nvidia.com/gpu"]) == instance["gpus"], name
        assert _cpus(container["resources"]["requests"]["cpu"]) < instance["vcpus"], name  # room for the kubelet
    preset = (PRESETS / "gpu-node.yaml").read_text()
    assert gpu_types[0] in preset and "80GB" not in preset.split("\n", 1)[0], "gpu-node.yaml's header names the node"


def test_image_installs_every_extra_the_entrypoints_use():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    m = re.search(r"for x in \(([^)]*)\)", dockerfile)
    assert m, "the Dockerfile's extras list moved"
    installed = set(re.findall(r"'([a-z-]+)'", m.group(1)))
    # build -> builder; latents, train, sample, eval -> trainer; download -> download
    needed = {"models", "builder", "trainer", "download"}
    assert needed <= installed, needed - installed
    assert installed <= set(extras)
    assert any(d.startswith("tensorboard==") for d in extras["trainer"]), "tensorboard belongs to the trainer extra"


def test_deploy_readme_stops_only_its_own_processes():
    text = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = [ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    assert not [c for c in commands if re.match(r"^ray stop\b", c)], "the README runs `ray stop`"
    assert any(c.startswith("kill -- -") for c in commands)


def _dry_run(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(["bash", str(DEPLOY / "submit.sh"), *args], env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    cmd = out.stdout.splitlines()
    assert cmd[:3] == ["ray", "job", "submit"]
    return {"cmd": cmd, "env_vars": json.loads(cmd[cmd.index("--runtime-env-json") + 1])["env_vars"]}


@pytest.fixture
def shell_env() -> dict[str, str]:
    """This process's environment as a user's shell for local work would have it: hub offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HUMANVERSE_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_TOKEN="secret")
    return env


def test_submit_dry_run_passes_no_hub_offline_switch(shell_env):
    shared = _yaml("runtime_env.yaml")["env_vars"]
    for how in ({"args": ("--dry-run",), "env": {}}, {"args": (), "env": {"HUMANVERSE_SUBMIT_DRY_RUN": "1"}}):
        got = _dry_run({**shell_env, **how["env"]}, *how["args"], "s3://in", "s3://out", "--models", "paper")
        assert got["env_vars"] == shared, got["env_vars"]  # nothing of the shell: no offline switch, no token
        assert got["cmd"][got["cmd"].index("--") + 1:] == ["python", "-m", "pipelines.build", "s3://in", "s3://out",
                                                            "--models", "paper"]
    # what the job needs: the tiny zoo's location; the switches only when asked for by name
    got = _dry_run({**shell_env, "HUMANVERSE_TINY_ZOO": "/zoo", "HUMANVERSE_SUBMIT_ENV": "HF_HUB_OFFLINE"},
                   "--dry-run", "in", "out", "--models", "tiny")
    assert got["env_vars"] == {**shared, "HUMANVERSE_TINY_ZOO": "/zoo", "HF_HUB_OFFLINE": "1"}
