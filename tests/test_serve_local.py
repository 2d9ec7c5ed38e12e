"""`midiforge serve`'s local Ray: the Ray settings for serving reach Ray's processes.

The session's shared Ray was started without them, so the one check that needs a Ray
starts its own in a child process (as tests/test_cluster_runs.py starts its nodes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from midiforge.serving import local


def test_serve_ray_env_fills_what_is_unset_and_restores_the_environment(monkeypatch):
    for key in local.SERVE_RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    key, user_value = "RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "2"
    monkeypatch.setenv(key, user_value)  # a value the user set wins
    before = dict(os.environ)
    with local.serve_ray_env():
        inside = {k: os.environ.get(k) for k in local.SERVE_RAY_ENV}
    assert inside == {**local.SERVE_RAY_ENV, key: user_value}
    assert dict(os.environ) == before


PROBE = textwrap.dedent(
    """
    import json, re, time
    import numpy as np, ray
    from ray._private.internal_api import memory_summary
    from midiforge.serving.local import serve_ray_env

    with serve_ray_env():
        ray.init(address="local", num_cpus=1, _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Probe:
        def interval(self):
            from ray.serve._private.constants import CONTROL_LOOP_INTERVAL_S
            return CONTROL_LOOP_INTERVAL_S

        def hold(self, clip, seconds):
            time.sleep(seconds)
            return clip.nbytes

    probe = Probe.remote()
    interval = ray.get(probe.interval.remote())
    # 10 s at 22,050 Hz, as the Gateway sends it; while the call runs, an argument that
    # went through the object store sits there, pinned.
    held = probe.hold.remote(np.zeros(220_500, np.float32), 3)
    summary = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    stats = re.search(r"Plasma memory usage.*?(\\d+) objects", summary)
    print(json.dumps({"interval": interval, "stored": int(stats.group(1)),
                      "nbytes": ray.get(held)}))
    ray.shutdown()
    """
)


def test_a_local_ray_started_for_serving_passes_clips_inline_and_polls_slower():
    """Without the settings the clip lands in the object store (1 object) and the
    controller's interval is Serve's default, 0.1 s."""
    env = {k: v for k, v in os.environ.items() if k not in local.SERVE_RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,  # the assert shows stderr
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"interval": 0.5, "stored": 0, "nbytes": 882_000}
