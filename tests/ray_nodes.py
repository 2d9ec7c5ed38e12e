"""Real Ray nodes as processes on 127.0.0.1, for the tests that play a cluster.

Each node gets its own ports and a short temp dir (Ray's socket paths are length
limited), so several nodes share the machine the way `ray.cluster_utils` runs them.
Nodes are `ray start --block` process groups: SIGTERM stops their Ray processes, and
`stop` kills whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import free_port

BIN = Path(sys.executable).parent


def ray_env(**extra: str) -> dict[str, str]:
    """The test's environment for Ray CLIs, with `extra` set and unset ("" = unset)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    for key, value in extra.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


def _ports(*names: str) -> dict[str, int]:
    return {name: free_port() for name in names}


def start_head(env: dict[str, str], num_cpus: int = 2) -> tuple[subprocess.Popen, dict[str, int]]:
    """A head node with its dashboard (and job API) on 127.0.0.1; returns (process, ports)."""
    ports = _ports("gcs", "dash", "agent", "client", "metrics")
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports['dash']}", f"--dashboard-agent-listen-port={ports['agent']}",
        f"--ray-client-server-port={ports['client']}",
        f"--metrics-export-port={ports['metrics']}", f"--num-cpus={num_cpus}",
        f"--temp-dir={temp}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]  # fmt: skip
    return _spawn(cmd, env, temp), ports


def start_worker(env: dict[str, str], gcs_port: int, num_cpus: int = 1) -> subprocess.Popen:
    """A second node joining the head at 127.0.0.1:gcs_port, with its own ports."""
    ports = _ports("node", "objects", "agent", "agent_grpc", "runtime_env", "metrics")
    temp = tempfile.mkdtemp(prefix="rw-", dir="/tmp")
    cmd = [
        str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs_port}",
        "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        f"--node-manager-port={ports['node']}", f"--object-manager-port={ports['objects']}",
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]  # fmt: skip
    return _spawn(cmd, env, temp)


def _spawn(cmd: list[str], env: dict[str, str], temp: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    proc.temp_dir = temp  # removed by `stop`
    return proc


def wait_http(url: str, proc: subprocess.Popen, seconds: float) -> None:
    """Until `url` answers at all (401 counts: token auth answers before it accepts)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.5)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop(*procs: subprocess.Popen) -> None:
    """Workers first, then the head: SIGTERM, a grace period, SIGKILL, then their logs."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        kill_group(proc)
        shutil.rmtree(getattr(proc, "temp_dir", ""), ignore_errors=True)
