"""The deployment path, for real and locally: ``deploy/submit.sh`` (``ray job submit``) against a
two-node Ray cluster on 127.0.0.1 started with ``ray start``, running the builder on synthetic
images with the tiny model zoo; plus static checks of the ``deploy/`` files.

The cluster is this test's own: unique temp dirs and ports, token authentication with a token
made up for this run, every process started in a session this test owns and killed by it at the
end (never ``ray stop``, which would kill every Ray process on the machine, other tests' included).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent  # the nodes, the job and its workers all run this venv's Python
RAY = VENV_BIN / "ray"
N_IMAGES = 12
SHARD_SIZE = 3  # 4 source shards, so the read step has work to spread over both nodes

START_TIMEOUT_S = 120  # one `ray start` (the raylet once needed ~60 s under heavy load here)
JOB_TIMEOUT_S = 180  # `ray job submit` from upload to the job's end


# -- static checks of deploy/ ---------------------------------------------------------------------


def _load_yaml(rel: str):
    with open(DEPLOY / rel) as f:
        return yaml.safe_load(f)


def test_deploy_files():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        assert docs, f"{path} is empty"
    shared = _load_yaml("runtime_env.yaml")
    assert {".venv", "out", ".git"} <= set(shared["excludes"])

    # The launcher config passes Ray's own schema check (what `ray up` runs first).
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = prepare_config(_load_yaml("cluster.yaml"))
    validate_config(cluster)
    assert any(t["node_config"]["InstanceType"].startswith(("p4d", "p5", "g5", "g6"))
               for t in cluster["available_node_types"].values()), "cluster.yaml has no GPU worker type"

    rc = _load_yaml("kuberay/raycluster.yaml")
    assert rc["kind"] == "RayCluster"
    limits = [c["resources"]["limits"] for g in rc["spec"]["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"]]
    assert any(lim.get("nvidia.com/gpu") for lim in limits), "no worker group asks for nvidia.com/gpu"

    job = _load_yaml("kuberay/rayjob.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["entrypoint"].split() == [
        "python", "-m", "pipelines.build", "s3://bucket/laion-shards", "s3://bucket/humanverse",
        "--config", "pipelines/presets/gpu-node.yaml", "--models", "paper"]
    assert (REPO / "pipelines/presets/gpu-node.yaml").is_file()
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert job_env["working_dir"] and job_env["excludes"] == shared["excludes"]
    assert job_env["env_vars"] == shared["env_vars"]

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "torch==2.14.1" in dockerfile and "pip install --no-cache-dir --no-deps -e ." in dockerfile
    assert "ENV HF_HOME=" in dockerfile
    # torch (CUDA index) is installed before the project, so pip never resolves another torch
    assert dockerfile.index("torch==2.14.1") < dockerfile.index("-r /tmp/requirements.txt")


#: what deploy/submit.sh passes from its environment to the job's (when set; others only when named
#: in HUMANVERSE_SUBMIT_ENV: tests/test_deploy.py)
PASSTHROUGH = ("HUMANVERSE_TINY_ZOO",)


def _submit_sh_dry_run(env: dict[str, str], *args: str) -> list[str]:
    out = subprocess.run(["bash", str(DEPLOY / "submit.sh"), *args], env={**env, "HUMANVERSE_SUBMIT_DRY_RUN": "1"},
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.splitlines()


def test_submit_sh_syntax_and_runtime_env():
    subprocess.run(["bash", "-n", str(DEPLOY / "submit.sh")], check=True, timeout=30)
    bad = subprocess.run(["bash", str(DEPLOY / "submit.sh")], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage:" in bad.stdout

    env = {k: v for k, v in os.environ.items() if k not in PASSTHROUGH and not k.startswith(("RAY_", "HUMANVERSE_"))}
    env.update(HUMANVERSE_TINY_ZOO='/tmp/zoo "quoted"', HF_HUB_OFFLINE="1", HUMANVERSE_SUBMIT_ENV="HF_HUB_OFFLINE")
    cmd = _submit_sh_dry_run(env, "in dir", "out", "--models", "tiny")
    assert cmd[:3] == ["ray", "job", "submit"]
    assert cmd[cmd.index("--address") + 1] == "http://127.0.0.1:8265"
    assert cmd[cmd.index("--working-dir") + 1] == "."
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "pipelines.build", "in dir", "out", "--models", "tiny"]
    runtime_env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    shared = _load_yaml("runtime_env.yaml")
    assert runtime_env["excludes"] == shared["excludes"], "submit.sh and runtime_env.yaml excludes differ"
    assert {".venv", "out", ".git"} <= set(runtime_env["excludes"])
    assert runtime_env["env_vars"] == {**shared["env_vars"], "HUMANVERSE_TINY_ZOO": '/tmp/zoo "quoted"',
                                       "HF_HUB_OFFLINE": "1"}

    cmd = _submit_sh_dry_run({**env, "HUMANVERSE_SUBMIT_ENV": "MY_FLAG UNSET_FLAG", "MY_FLAG": "x",
                              "HUMANVERSE_SUBMIT_ARGS": "--no-wait --submission-id s1"}, "a", "b")
    assert cmd[cmd.index("--no-wait"):cmd.index("--")] == ["--no-wait", "--submission-id", "s1"]
    env_vars = json.loads(cmd[cmd.index("--runtime-env-json") + 1])["env_vars"]
    assert env_vars["MY_FLAG"] == "x" and "UNSET_FLAG" not in env_vars
    bad = subprocess.run(["bash", str(DEPLOY / "submit.sh"), "a", "b"], capture_output=True, text=True, timeout=30,
                         env={**env, "HUMANVERSE_SUBMIT_ENV": "NOT-A-NAME", "HUMANVERSE_SUBMIT_DRY_RUN": "1"})
    assert bad.returncode == 2 and "NOT-A-NAME" in bad.stderr


# -- a two-node cluster of our own ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_range(n: int, taken: set[int]) -> tuple[int, int]:
    """``n`` consecutive ports below the kernel's ephemeral range (so outgoing connections never
    take them) that are free now and not in ``taken``."""
    for _ in range(200):
        lo = random.randrange(20000, 32000 - n)
        ports = range(lo, lo + n)
        if taken.intersection(ports):
            continue
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return lo, lo + n - 1
    raise RuntimeError(f"found no {n} consecutive free ports")


class RayNode:
    """``ray start --block`` in a session of its own: the process group is everything it starts."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], temp_dir: Path):
        self.name = name
        self.temp_dir = temp_dir
        self.log_path = temp_dir.parent / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(RAY), "start", "--block", "--temp-dir", str(temp_dir), *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start` ({self.name}) exited with {self.proc.returncode}:\n"
                                   f"{self.output()[-4000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"`ray start` ({self.name}) did not start within {timeout:.0f} s (machine "
                           f"overloaded?):\n{self.output()[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        """Every live process this node started: its process tree and process group (Ray's workers
        get process groups of their own), and anything whose command line or working directory is
        in its temp dir (which finds them again once `ray start` is gone and they are orphans)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        mark = str(self.temp_dir)
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            try:
                if (os.getpgid(p.pid) == self.proc.pid or mark in " ".join(p.info["cmdline"] or ())
                        or (p.info["cwd"] or "").startswith(mark)):  # e.g. a job driver in its working_dir
                    found[p.pid] = p
            except (psutil.Error, OSError):
                pass
        return [p for p in found.values() if _alive(p)]

    def kill(self, grace: float = 5.0) -> list[psutil.Process]:
        """SIGTERM then SIGKILL to this node's processes only; returns those still alive after."""
        procs = self.processes()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_alive(p) for p in procs):
                time.sleep(0.2)
            procs = [p for p in procs if _alive(p)] + [p for p in self.processes() if p not in procs]
            if not procs:
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        return [p for p in procs if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _http_json(url: str, token: str | None, timeout: float = 30.0):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _write_images(folder: Path) -> None:
    from humanverse.testing.synthetic import make_sample

    folder.mkdir()
    for i in range(N_IMAGES):
        make_sample(224 + 16 * (i % 4), 288, num_persons=1 + i % 3, seed=i).image.save(
            folder / f"img{i:02d}.jpg", quality=90)


@pytest.mark.timeout(300)
def test_ray_job_submit_two_nodes(tmp_path, tiny_zoo):
    t0 = time.monotonic()
    inputs, output = tmp_path / "images", tmp_path / "dataset"
    _write_images(inputs)

    # Socket paths live under the temp dir and are limited to ~107 bytes: keep it short.
    root = Path(tempfile.mkdtemp(prefix="hvrj-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("HUMANVERSE_TINY_ZOO", "HF_HUB_OFFLINE")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the job = this venv's
        RAY_USAGE_STATS_ENABLED="0",
        # Token auth with a token of our own, in the environment only (no ~/.ray/auth_token):
        # nodes, the job driver, its workers and the `ray job submit` client all read it.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    # Ports with fixed defaults get free ones (two nodes and other tests' clusters share this
    # machine); node/object manager, agent gRPC and metrics ports are left at 0 (self-bound).
    gcs, dash, client, agent_head, agent_worker = (_free_port() for _ in range(5))
    taken = {gcs, dash, client, agent_head, agent_worker}
    head_workers = _free_port_range(200, taken)
    taken.update(range(head_workers[0], head_workers[1] + 1))
    worker_workers = _free_port_range(200, taken)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
              "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats"]
    nodes: list[RayNode] = []
    try:
        head = RayNode("head", [
            "--head", "--port", str(gcs), "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent_head),
            "--min-worker-port", str(head_workers[0]), "--max-worker-port", str(head_workers[1]), *common,
        ], env, root / "head")
        nodes.append(head)
        head.wait_started(START_TIMEOUT_S)
        worker = RayNode("worker", [
            "--address", f"127.0.0.1:{gcs}", "--dashboard-agent-listen-port", str(agent_worker),
            "--min-worker-port", str(worker_workers[0]), "--max-worker-port", str(worker_workers[1]), *common,
        ], env, root / "worker")
        nodes.append(worker)
        worker.wait_started(START_TIMEOUT_S)
        t_cluster = time.monotonic() - t0

        api = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 60
        while True:  # the dashboard's HTTP server may come up a little after `ray start` returns
            try:
                alive = [n for n in _http_json(f"{api}/api/v0/nodes?limit=100", token)["data"]["result"]["result"]
                         if n["state"] == "ALIVE"]
                if len(alive) == 2:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                alive = []
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster at {api} never showed 2 alive nodes (saw {len(alive)})")
            time.sleep(1)
        node_ids = {n["node_id"] for n in alive}
        head_id = next(n["node_id"] for n in alive if n["is_head_node"])
        # Token auth is really on: the job API refuses a request without the token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http_json(f"{api}/api/jobs/", None)
        assert refused.value.code == 401

        submission_id = f"hvtest-{secrets.token_hex(4)}"
        submit_env = {**env, "RAY_ADDRESS": api, "HF_HUB_OFFLINE": "1", "HUMANVERSE_TINY_ZOO": str(tiny_zoo),
                      "HUMANVERSE_SUBMIT_ENV": "HF_HUB_OFFLINE",
                      "HUMANVERSE_SUBMIT_ARGS": f"--submission-id {submission_id}"}
        t1 = time.monotonic()
        try:
            sub = subprocess.run(
                ["bash", str(DEPLOY / "submit.sh"), str(inputs), str(output),
                 "--config", "pipelines/presets/cpu.yaml", "--models", "tiny",
                 "--set", f"input.folder_shard_size={SHARD_SIZE}", "--set", "ray.progress_bars=false"],
                cwd=tmp_path, env=submit_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            so_far = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise AssertionError(f"the job did not end within {JOB_TIMEOUT_S} s; its log so far:\n"
                                 f"{so_far[-6000:]}") from None
        t_job = time.monotonic() - t1
        log = sub.stdout + sub.stderr
        info = _http_json(f"{api}/api/jobs/{submission_id}", token)
        assert sub.returncode == 0 and info["status"] == "SUCCEEDED", (
            f"job {submission_id} ended {info['status']} (ray job submit exit {sub.returncode}):\n{log[-8000:]}")

        if os.environ.get("HUMANVERSE_TEST_SHOW_JOB_LOG"):  # with -s: the job's log even when it passes
            print(log)
        import humanverse

        ds = humanverse.open(str(output))
        n_data, n_rejects = ds.num_rows("data"), ds.num_rows("rejects")
        assert n_data + n_rejects == N_IMAGES, (n_data, n_rejects, log[-4000:])
        ids = ds.to_arrow("data", ["id"])["id"].to_pylist() + ds.to_arrow("rejects", ["id"])["id"].to_pylist()
        assert len(set(ids)) == N_IMAGES

        # Where the job's tasks and actors ran (Ray Data spreads its tasks by default).
        tasks = _http_json(f"{api}/api/v0/tasks?limit=10000&detail=1&filter_keys=job_id&filter_predicates=%3D"
                           f"&filter_values={info['job_id']}", token)["data"]["result"]["result"]
        per_node: dict[str, set[str]] = {}
        for t in tasks:
            if t.get("node_id"):
                per_node.setdefault(t["node_id"], set()).add(t["name"])
        print(f"\n[ray job submit] cluster up in {t_cluster:.1f} s, job {t_job:.1f} s; {n_data} rows + "
              f"{n_rejects} rejects; {len(tasks)} tasks on {len(per_node)} of 2 nodes")
        for nid, names in per_node.items():
            print(f"  {'head' if nid == head_id else 'worker'} node: {sorted(names)}")
        assert set(per_node) <= node_ids, per_node
        # Ray Data spreads tasks and actor pools over nodes (SPREAD by default): both nodes ran the
        # project's code from the uploaded working dir, with the env submit.sh passed through.
        assert len(per_node) == 2, f"all of the job's tasks ran on one node: {per_node}"
    finally:
        leftovers = []
        for node in reversed(nodes):  # worker node first, then the head
            leftovers += node.kill()
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of this test's cluster survived teardown: {leftovers}"
    for node in nodes:
        assert node.proc.returncode is not None
