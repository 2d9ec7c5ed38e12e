"""midiforge on a real multi-node Ray cluster, and Ray's token auth closing the job API.

Both start real `ray start` nodes on 127.0.0.1 (tests/ray_nodes.py) with token auth on,
as cluster/ and k8s/ configure it, and stop them afterwards.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .ray_nodes import BIN, ray_env, start_head, start_worker, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter with the token in its environment: which node ran each
# task of the job, from Ray's state API (the dashboard's task events).
_TASK_NODES = """
import collections, json, sys
import ray
from ray.util.state import list_nodes, list_tasks
address = sys.argv[1]
nodes = {n.node_id: n.node_name for n in list_nodes(address=address)}
ray.init(address=sys.argv[2], log_to_driver=False)
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
ray.shutdown()
tasks = list_tasks(address=address, detail=True, limit=10000, raise_on_missing_output=False)
per_node = collections.Counter(t.node_id for t in tasks if t.node_id and t.state == "FINISHED")
names = collections.defaultdict(set)
for t in tasks:
    if t.node_id:
        names[t.node_id].add(t.name)
print(json.dumps({"alive": alive, "per_node": per_node,
                  "names": {k: sorted(v) for k, v in names.items()}}))
"""


def _token_env(home: Path, token: str) -> dict[str, str]:
    return ray_env(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)


def test_dataset_job_runs_on_two_nodes(tiny_corpus, tmp_path):
    """A head and a worker with one CPU each: the job's model actors (0.6 CPU each) cannot
    share a node, so both nodes must run its tasks."""
    home = tmp_path / "home"
    home.mkdir()
    env = _token_env(home, secrets.token_hex(16))
    head, ports = start_head(env, num_cpus=1)
    worker = None
    try:
        dashboard = f"http://127.0.0.1:{ports['dash']}"
        wait_http(f"{dashboard}/api/version", head, 120)
        worker = start_worker(env, ports["gcs"], num_cpus=1)
        out = tmp_path / "out"
        wavs = sorted((tiny_corpus / "audio").glob("*/*.wav"))
        job = subprocess.run(
            [
                sys.executable,
                "jobs/build_dataset.py",
                "--audio",
                *map(str, wavs),
                "--style-from-folder",
                "--out",
                str(out),
                "--seed",
                "3",
                "--address",
                f"127.0.0.1:{ports['gcs']}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        # Local paths on two nodes: right here (one filesystem), said to be a risk.
        assert "on a cluster of 2 nodes: every node must see them" in job.stderr + job.stdout
        rep = json.loads((out / "report.json").read_text())
        assert rep["inputs"] == len(wavs)
        assert rep["accepted"] > 0
        assert rep["accepted"] + rep["rejected"] == rep["inputs"]

        probe = subprocess.run(
            [sys.executable, "-c", _TASK_NODES, dashboard, f"127.0.0.1:{ports['gcs']}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(seen["alive"]) == 2, seen
        busy = {node for node, n in seen["per_node"].items() if n > 0}
        assert busy == set(seen["alive"]), seen  # tasks finished on both nodes
        # The transcription actors (0.6 CPU each) had to take one node each.
        with_transcriber = [
            n for n, names in seen["names"].items() if any("Transcri" in x for x in names)
        ]
        assert len(with_transcriber) == 2, json.dumps(seen["names"], indent=1)
    finally:
        stop(*(p for p in (worker, head) if p is not None))


def _submit(
    env: dict[str, str], address: str, code: str, *options: str
) -> subprocess.CompletedProcess:
    """`ray job submit` of `python -c CODE` from the repository root."""
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, *options,
         "--", "python", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip


# Where the job's driver and one of its tasks import midiforge from.
_WHERE_FROM = """
import midiforge, ray
ray.init()
task = ray.remote(lambda: __import__("midiforge").__file__)
print("DRIVER", midiforge.__file__)
print("TASK", ray.get(task.remote()))
"""


def test_token_auth_refuses_job_submission_without_the_token(tmp_path):
    """CVE-2023-48022: the job API runs arbitrary code, so without the token a client
    gets nothing: no submission, not even the job list."""
    token = secrets.token_hex(16)
    server_home, client_home = tmp_path / "server", tmp_path / "client"
    server_home.mkdir()
    client_home.mkdir()  # no ~/.ray/auth_token here
    head, ports = start_head(_token_env(server_home, token), num_cpus=1)
    try:
        address = f"http://127.0.0.1:{ports['dash']}"
        wait_http(f"{address}/api/version", head, 120)

        # A plain HTTP client (an attacker's curl) is refused by the job API itself.
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)  # noqa: S310
        assert refused_http.value.code == 401

        no_token = ray_env(HOME=str(client_home), RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN="")
        refused = _submit(no_token, address, "print('ran-without-token')")
        assert refused.returncode != 0
        assert "ran-without-token" not in refused.stdout
        wrong = _submit(
            _token_env(client_home, secrets.token_hex(16)), address, "print('ran-wrong')"
        )
        assert wrong.returncode != 0
        assert "ran-wrong" not in wrong.stdout

        accepted = _submit(_token_env(client_home, token), address, "print('ran-with-token')")
        assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
        assert "ran-with-token" in accepted.stdout
        assert "succeeded" in accepted.stdout

        # Only the authorised job ever reached the cluster.
        auth = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(f"{address}/api/jobs/", headers=auth)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            jobs = json.loads(resp.read())
        assert len(jobs) == 1 and "ran-with-token" in jobs[0]["entrypoint"], jobs

        # cluster/runtime-env.yaml ships this checkout's src/midiforge to the job: its
        # driver and its tasks import it from Ray's upload, not from the installed copy.
        shipped = _submit(
            _token_env(client_home, token), address, _WHERE_FROM,
            "--runtime-env", "cluster/runtime-env.yaml",
        )  # fmt: skip
        assert shipped.returncode == 0, shipped.stdout[-2000:] + shipped.stderr[-2000:]
        where = dict(
            line.split(" ", 1) for line in shipped.stdout.splitlines()
            if line.startswith(("DRIVER ", "TASK "))
        )  # fmt: skip
        assert set(where) == {"DRIVER", "TASK"}, shipped.stdout[-2000:]
        for path in where.values():
            assert "runtime_resources" in path and not path.startswith(str(ROOT)), where
    finally:
        stop(head)
