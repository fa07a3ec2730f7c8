"""deploy/: every manifest validates against KubeRay's own CRD schemas, and every RayJob entrypoint
is a command our CLI accepts with that config (the real argument parser and config loader)."""

import copy
import json
import functools
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from fpa_ray.config import load_config
from fpa_ray.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted((ROOT / "deploy" / "kuberay").glob("*.yaml"))
CRDS = ROOT / "tests" / "data" / "kuberay-crds"  # copied from ray-project/kuberay, see SOURCE there
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML


@functools.cache
def crd_schema(kind: str) -> dict:
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=Loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def manifest(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cluster_spec(document: dict) -> dict:
    return document["spec"]["rayClusterSpec"] if document["kind"] == "RayJob" else document["spec"]


def test_every_kind_is_deployed():
    kinds = {p.name: manifest(p)["kind"] for p in MANIFESTS}  # the long-lived cluster; offline, GRPO, GRPO with split pools
    assert kinds == {"raycluster.yaml": "RayCluster", "rayjob-offline.yaml": "RayJob", "rayjob-grpo.yaml": "RayJob",
                     "rayjob-grpo-split.yaml": "RayJob"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kuberay_crd(path):
    document = manifest(path)
    assert document["apiVersion"] == "ray.io/v1"
    jsonschema.validate(document, crd_schema(document["kind"]))


def test_the_validation_is_real():
    document = manifest(ROOT / "deploy" / "kuberay" / "raycluster.yaml")
    broken = copy.deepcopy(document)
    broken["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        jsonschema.validate(broken, crd_schema("RayCluster"))
    broken = copy.deepcopy(document)
    broken["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError, match="'password' is not one of"):
        jsonschema.validate(broken, crd_schema("RayCluster"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_cluster_shape_matches_the_image_and_the_gpus(path):
    spec = cluster_spec(manifest(path))
    image_ray = re.search(r"^FROM rayproject/ray:([\d.]+)-", (ROOT / "deploy" / "Dockerfile").read_text(), re.M).group(1)
    assert spec["rayVersion"] == image_ray == ray.__version__  # the image, the manifests and our pin agree
    assert spec["authOptions"]["mode"] == "token"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["securityContext"]["privileged"] is False
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert "persistentVolumeClaim" in volumes[mounts["/shared"]]  # HF cache and runs, shared by every pod
            resources = container["resources"]
            gpus = resources["limits"].get("nvidia.com/gpu")
            assert resources["requests"].get("nvidia.com/gpu") == gpus
            assert group["rayStartParams"].get("num-gpus") == gpus  # Ray schedules exactly what Kubernetes gave
    assert any(g["rayStartParams"].get("num-gpus") for g in spec["workerGroupSpecs"])


@pytest.mark.parametrize("path", [p for p in MANIFESTS if manifest(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_lifecycle_and_entrypoint(path):
    document = manifest(path)
    spec = document["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["python", "-m", "fpa_ray.main"]
    args = build_parser().parse_args(words[3:])
    config = load_config(args.config, args.overrides)  # raises, naming the key, if the entrypoint is wrong
    assert (args.stage == "grpo") == (config.objective.name == "grpo") and args.stage in ("run", "grpo")
    assert str(config.output_dir) == "/shared/runs" != str(load_config(args.config).output_dir)  # the shared volume; recipes write runs/
    assert document["metadata"]["labels"]["fpa-ray/pipeline"] == ("grpo" if args.stage == "grpo" else "offline")
    gpus = sum(int(g["rayStartParams"].get("num-gpus", 0)) * g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    wanted = max(config.sampler.num_actors * config.sampler.gpus_per_actor, config.learner.num_workers * config.learner.gpus_per_worker)
    if args.stage == "grpo":  # samplers and learners hold their GPUs at the same time
        wanted = config.sampler.num_actors * config.sampler.gpus_per_actor + config.learner.num_workers * config.learner.gpus_per_worker
    assert 0 < wanted <= gpus


def _offered(group: dict) -> dict[str, float]:
    """A worker group's custom resources: rayStartParams.resources is a JSON map quoted once more for KubeRay."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


@pytest.mark.parametrize("path", [p for p in MANIFESTS if manifest(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_every_placed_pool_fits_the_worker_groups_that_offer_its_resources(path):
    spec = manifest(path)["spec"]
    words = shlex.split(spec["entrypoint"])
    args = build_parser().parse_args(words[3:])
    config = load_config(args.config, args.overrides)
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    pools = [(config.sampler.resources, config.sampler.num_actors, config.sampler.gpus_per_actor, config.sampler.cpus_per_actor),
             (config.learner.resources, config.learner.num_workers, config.learner.gpus_per_worker, config.learner.cpus_per_worker),
             (config.verifier.resources, config.verifier.num_actors, 0, config.verifier.workers_per_actor)]
    for resources, count, gpus, cpus in pools:
        if not resources:
            continue
        hosts = [g for g in groups if all(key in _offered(g) for key in resources)]
        assert hosts, f"{path.name}: no worker group offers {resources}"
        for key, amount in resources.items():
            assert sum(_offered(g)[key] * g["replicas"] for g in hosts) >= count * amount
        assert sum(int(g["rayStartParams"].get("num-gpus", 0)) * g["replicas"] for g in hosts) >= count * gpus
        pod_cpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) * g["replicas"] for g in hosts)
        assert pod_cpus >= count * cpus
    placed = [p for p in pools if p[0]]
    if placed:  # a split manifest places every pool: none is left to land on another pool's nodes
        assert len(placed) == 3 and len({tuple(sorted(p[0])) for p in placed}) == 3
