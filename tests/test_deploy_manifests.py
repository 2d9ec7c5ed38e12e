"""The container image, cluster launcher YAMLs and KubeRay manifests, checked offline.

One pin decides the Ray version (pyproject.toml); the Dockerfile, cluster/ and k8s/
must agree with it. The launcher YAMLs go through Ray's own config preparation and
schema; the KubeRay manifests through JSON schemas trimmed from KubeRay's CRDs
(k8s/schema/, every KubeRay-level key checked, so a misspelt field fails). Security:
token auth in every cluster, no dashboard on a public address, no inline credentials.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/home/ray/midiforge/"  # where docker/Dockerfile puts this checkout
MANIFESTS = {
    "raycluster.yaml": "raycluster",
    "rayjob-dataset.yaml": "rayjob",
    "rayservice.yaml": "rayservice",
}
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def pinned_ray() -> str:
    """The one Ray pin: every extra in pyproject.toml names the same version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {m.group(1) for r in reqs if (m := re.match(r"ray\[[^\]]*\]==([\d.]+)$", r))}
    assert len(pins) == 1, f"pyproject.toml pins Ray more than one way: {pins}"
    return pins.pop()


def manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "k8s" / name).read_text())


def cluster_specs() -> dict[str, dict]:
    return {
        "raycluster.yaml": manifest("raycluster.yaml")["spec"],
        "rayjob-dataset.yaml": manifest("rayjob-dataset.yaml")["spec"]["rayClusterSpec"],
        "rayservice.yaml": manifest("rayservice.yaml")["spec"]["rayClusterConfig"],
    }


def containers(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, pod spec, container) for the head and every worker group."""
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [
        (n, g["template"]["spec"], c)
        for n, g in groups
        for c in g["template"]["spec"]["containers"]
    ]


# --- the image ---------------------------------------------------------------------------


def test_dockerfile_builds_from_the_pinned_ray_image():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pinned_ray())}$", text, re.MULTILINE)
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}" in text
    assert "python3.11" in (ROOT / "Makefile").read_text()  # the same Python as make install
    for variant in ("cpu", "gpu"):  # VARIANT picks requirements/torch-VARIANT.txt
        assert (ROOT / "requirements" / f"torch-{variant}.txt").is_file()
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.MULTILINE):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "bash cluster/install-midiforge.sh ${VARIANT}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "out" in ignored


def test_makefile_image_target_passes_the_pin():
    text = (ROOT / "Makefile").read_text()
    assert "--build-arg RAY_VERSION=$(RAY_VERSION)" in text
    assert "pyproject.toml" in re.search(r"^RAY_VERSION\s*:=.*$", text, re.MULTILINE).group(0)


# --- cluster/ (Ray cluster launcher) -------------------------------------------------------


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_launcher_yaml_passes_rays_own_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(prepare_config(raw))  # fills the provider's defaults, then the schema
    # Every node: midiforge from this checkout, Ray with token auth, a loopback dashboard.
    assert raw["file_mounts"][next(iter(raw["file_mounts"]))] == "."
    assert any("cluster/install-midiforge.sh" in c for c in raw["setup_commands"])
    head = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head  # noqa: S104
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(raw["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in raw["file_mounts"].values()


def test_launcher_images_are_the_pinned_ray():
    raw = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    images = [raw["docker"]["image"]] + [
        t["docker"]["worker_image"] for t in raw["available_node_types"].values() if "docker" in t
    ]
    pin = pinned_ray()
    assert images == [f"rayproject/ray:{pin}-py311-cpu", f"rayproject/ray:{pin}-py311-gpu"]
    gpu = raw["available_node_types"]["gpu-worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance family
    assert raw["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_gpu_dataset_config_loads():
    from midiforge import config as cfgmod
    from midiforge.pipeline.config import DatasetConfig

    cfg = cfgmod.load(DatasetConfig, ROOT / "cluster" / "dataset-gpu.yaml", audio=["x.wav"])
    assert cfg.compute.transcribe.num_gpus > 0 and cfg.compute.separate.num_gpus > 0
    assert cfg.compute.transcribe.max_actors > cfg.compute.transcribe.actors  # autoscaling


# --- k8s/ (KubeRay) ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), MANIFESTS.items())
def test_manifest_matches_the_kuberay_crd_schema(name, kind):
    schema = json.loads((ROOT / "k8s" / "schema" / f"{kind}.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(manifest(name), schema)


def test_schema_rejects_a_misspelt_kuberay_field():
    """The trimmed schemas keep KubeRay's levels closed, so the check above can fail."""
    schema = json.loads((ROOT / "k8s" / "schema" / "raycluster.schema.json").read_text())
    bad = manifest("raycluster.yaml")
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = manifest("raycluster.yaml")
    bad["spec"]["authOptions"]["mode"] = "tokens"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_cluster_runs_the_pinned_image_with_token_auth(name):
    pin = pinned_ray()
    spec = cluster_specs()[name]
    assert spec["rayVersion"] == pin
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert spec["enableInTreeAutoscaling"] is True
    for group, pod, c in containers(spec):
        image = c["image"].rsplit("/", 1)[-1]
        assert re.fullmatch(rf"midiforge:{re.escape(pin)}-(cpu|gpu)", image), (group, c["image"])
        gpus = c["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert image.endswith("-gpu") == (gpus > 0), (group, image, gpus)
        if gpus:  # GPU pods go to GPU nodes and tolerate their taint
            assert pod["nodeSelector"] and any(
                t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]
            )
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
        assert [e["secretRef"]["name"] for e in c.get("envFrom", [])] == ["midiforge-object-store"]
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"]  # the autoscaler has room


def test_raycluster_and_rayjob_have_cpu_and_gpu_groups():
    for name in ("raycluster.yaml", "rayjob-dataset.yaml"):
        groups = {g["groupName"] for g in cluster_specs()[name]["workerGroupSpecs"]}
        assert groups == {"cpu", "gpu"}, name


def test_rayjob_entrypoint_is_the_dataset_job_with_valid_flags():
    from midiforge.job import parser_for
    from midiforge.pipeline import command

    spec = manifest("rayjob-dataset.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    argv = [a.replace(IMAGE_ROOT, f"{ROOT}/") for a in shlex.split(spec["entrypoint"])]
    assert argv[:2] == ["python", f"{ROOT}/jobs/build_dataset.py"]
    assert Path(argv[1]).is_file()
    args, overrides = parser_for(__doc__, command.add_arguments, argv[2:])
    assert Path(args.config).is_file()
    cfg = command.config_from_args(args, overrides)  # loads and validates the config
    assert cfg.out.startswith("s3://") and cfg.audio


def test_rayservice_serves_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    spec = importlib.util.spec_from_file_location("sync", ROOT / "k8s" / "sync_serve_config.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    text = (ROOT / "k8s" / "rayservice.yaml").read_text()
    serve_yaml = (ROOT / "serve" / "config.yaml").read_text()
    assert sync.synced(text, serve_yaml) == text, (
        "k8s/rayservice.yaml's serveConfigV2 differs from serve/config.yaml: "
        "run `python k8s/sync_serve_config.py`"
    )
    embedded = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(serve_yaml)
    ServeDeploySchema.model_validate(embedded)
    # The Serve token reaches every pod that may run the gateway, from a Secret.
    for _, _, c in containers(cluster_specs()["rayservice.yaml"]):
        token = {e["name"]: e for e in c["env"]}["MIDIFORGE_API_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "midiforge-api", "key": "token"}


def test_serving_pods_get_the_ray_settings_midiforge_serve_uses_and_dataset_pods_do_not():
    from midiforge.serving.local import SERVE_RAY_ENV

    for name in MANIFESTS:
        for group, _, c in containers(cluster_specs()[name]):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if name == "rayservice.yaml":
                assert {k: env.get(k) for k in SERVE_RAY_ENV} == SERVE_RAY_ENV, group
            else:  # Ray Data tasks would return blocks of this size inline to the driver
                assert not set(SERVE_RAY_ENV) & set(env), (name, group)


def test_readme_documents_the_secrets_the_manifests_use():
    readme = (ROOT / "k8s" / "README.md").read_text()
    for secret in ("midiforge-object-store", "midiforge-api"):
        assert f"kubectl create secret generic {secret}" in readme
