"""KubeRay manifests (cluster/kuberay/) against KubeRay's CRD schemas, and what they run."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import yaml

from streampro.cli import COMMANDS, build_parser
from streampro.cluster.manifests import (
    find_crds_dir,
    load_crd_schemas,
    manifest_docs,
    unknown_fields,
    validate,
)
from streampro.cluster.resources import ROLES
from streampro.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = dict(manifest_docs())
BY_KIND = {doc["kind"]: doc for doc in DOCS.values()}


@pytest.fixture(scope="module")
def schemas():
    crds = find_crds_dir()
    if crds is None:
        pytest.skip(
            "KubeRay CRDs not found: expected ../shared/kuberay-crds beside the checkout "
            "or $STREAMPRO_KUBERAY_CRDS"
        )
    return load_crd_schemas(crds)


def test_every_kind_is_present():
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim"} <= set(BY_KIND)


@pytest.mark.parametrize("name", sorted(DOCS))
def test_manifest_matches_crd_schema(name, schemas):
    doc = DOCS[name]
    if doc["apiVersion"].startswith("ray.io/"):
        assert (doc["apiVersion"], doc["kind"]) in schemas
    assert validate(doc, schemas) == []


def test_validator_catches_typos_and_bad_types(schemas):
    doc = copy.deepcopy(BY_KIND["RayCluster"])
    doc["spec"]["enableInTreeAutoscalling"] = True  # typo: Kubernetes would drop it silently
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    problems = validate(doc, schemas)
    assert "spec.enableInTreeAutoscalling: unknown field" in problems
    assert any(p.startswith("spec.workerGroupSpecs.0.maxReplicas:") for p in problems)
    assert (
        unknown_fields(
            {"a": {"b": 1}},
            {
                "type": "object",
                "properties": {
                    "a": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            },
        )
        == []
    )


def _cluster_specs():
    yield "RayCluster", BY_KIND["RayCluster"]["spec"]
    yield "RayJob", BY_KIND["RayJob"]["spec"]["rayClusterSpec"]
    yield "RayService", BY_KIND["RayService"]["spec"]["rayClusterConfig"]


@pytest.mark.parametrize(
    "kind,spec", list(_cluster_specs()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_autoscaling_storage_and_private_dashboard(kind, spec):
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    groups = [head] + spec["workerGroupSpecs"]
    for g in groups:
        pod = g["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        if "/checkpoints" in mounts:
            assert (
                vols[mounts["/checkpoints"]]["persistentVolumeClaim"]["claimName"]
                == BY_KIND["PersistentVolumeClaim"]["metadata"]["name"]
            )
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        res = json.loads(json.loads(g["rayStartParams"]["resources"]))  # KubeRay's quoted JSON
        role = g["groupName"].split("-")[0]
        assert role in ROLES and set(res) == {role}, g["groupName"]


def test_raycluster_worker_groups_per_role():
    groups = {g["groupName"]: g for g in BY_KIND["RayCluster"]["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"rollout-gpu", "learner-gpu", "reward-cpu"}
    gpus = {
        n: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for n, g in groups.items()
    }
    assert gpus["rollout-gpu"] and gpus["learner-gpu"] and gpus["reward-cpu"] is None
    # the RayJob's own cluster has the same worker groups
    assert (
        BY_KIND["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        == BY_KIND["RayCluster"]["spec"]["workerGroupSpecs"]
    )


def test_rayjob_entrypoint_is_a_real_command_and_config():
    spec = BY_KIND["RayJob"]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "streampro" and argv[1] in COMMANDS
    args = build_parser().parse_args(argv[1:])
    assert args.config.startswith("/configs/")
    local = REPO / "configs" / Path(args.config).name  # what the ConfigMap is created from
    assert local.is_file(), f"{args.config}: no configs/{local.name} to build the ConfigMap from"
    # every override names a real config key (the judge URL comes from the environment)
    cfg = load_config(local, [*args.overrides, "reward.llm_url=http://judge/v1"])
    assert cfg.data.codec == "image"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    cm = next(v for v in head["volumes"] if "configMap" in v)
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == cm["name"])
    assert mount["mountPath"] == "/configs"


def test_rayservice_imports_the_streampolicy_app():
    serve_cfg = yaml.safe_load(BY_KIND["RayService"]["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    module, func = app["import_path"].split(":")
    assert module == "streampro.actors.serve.deploy"
    import importlib

    builder = getattr(importlib.import_module(module), func)
    built = builder(app["args"])  # builds the Application (deploys nothing): args are valid
    assert type(built).__name__ == "Application"
