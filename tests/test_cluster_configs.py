"""The example cluster configs are what Ray itself accepts.

``examples/cluster/aws.yaml`` goes through the cluster launcher's own preparation and schema
validation (``ray.autoscaler._private.util``: defaults merged, then ``ray-schema.json``).
``examples/cluster/kuberay.yaml`` goes through Ray's own KubeRay translation (the code the
in-tree autoscaler runs on the RayCluster resource, which validates its result against the same
schema), and its fields are checked against the keys Ray's KubeRay docs name.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "cluster"

# Keys of a RayCluster (ray.io/v1) that Ray's KubeRay docs name ("KubeRay autoscaling",
# "RayCluster configuration").
SPEC_KEYS = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headGroupSpec",
    "workerGroupSpecs",
    "headServiceAnnotations",
    "suspend",
}
AUTOSCALER_OPTION_KEYS = {
    "version",
    "upscalingMode",
    "idleTimeoutSeconds",
    "image",
    "imagePullPolicy",
    "resources",
    "env",
    "envFrom",
    "securityContext",
    "volumeMounts",
}
HEAD_KEYS = {"rayStartParams", "template", "serviceType", "enableIngress", "headService"}
WORKER_KEYS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
}


def _load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_aws_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("aws.yaml")
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # raises on anything the launcher would reject
    head = raw["head_node_type"]
    types = raw["available_node_types"]
    assert types[head]["resources"] == {"CPU": 0}  # the head runs no work
    workers = {k: v for k, v in types.items() if k != head}
    assert workers and all(t["min_workers"] == 0 for t in workers.values())  # from zero
    assert any(t["resources"].get("GPU") for t in workers.values())
    assert 0 < raw["idle_timeout_minutes"] <= 10
    assert any("--num-cpus=0" in c for c in raw["head_start_ray_commands"])


def test_aws_config_validation_is_real():
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = _load("aws.yaml")
    broken["available_node_types"]["cpu"]["min_workerz"] = 0  # a typo the schema refuses
    with pytest.raises(Exception, match="min_workerz"):
        validate_config(prepare_config(broken))


def test_kuberay_config_translates_through_rays_own_kuberay_code():
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = _load("kuberay.yaml")
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    spec = cr["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # the keys Ray's docs name, and nothing else
    assert set(spec) <= SPEC_KEYS
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER_OPTION_KEYS
    assert set(spec["headGroupSpec"]) <= HEAD_KEYS
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_KEYS
        assert group["minReplicas"] == 0 and group["replicas"] == 0
        assert group["maxReplicas"] > 0 and group["idleTimeoutSeconds"] > 0
    config = _derive_autoscaling_config_from_ray_cr(cr)  # validates against ray-schema.json
    types = config["available_node_types"]
    assert types["headgroup"]["resources"].get("CPU", 0) == 0
    assert types["cpu"]["resources"]["CPU"] == 4 and types["cpu"]["min_workers"] == 0
    assert types["gpu"]["resources"]["GPU"] == 1 and types["gpu"]["min_workers"] == 0
    assert config["idle_timeout_minutes"] == spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60
    # the node types the product reads from such a config (cluster.node_types())
    from nbserverless.core.autoscaler import _types_from_config

    found = _types_from_config(config)
    assert set(found) == {"cpu", "gpu"} and found["gpu"]["GPU"] == 1.0
