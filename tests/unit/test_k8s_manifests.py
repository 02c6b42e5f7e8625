"""The Kubernetes manifests of docs/k8s parse and carry the fields KEDA and the HPA require.

Not a cluster test: it checks what KEDA's admission webhook and each scaler's metadata parser
reject first (the required keys per trigger type, a TriggerAuthentication that exists and
provides what the trigger lacks), and that every rabbitmq trigger names one work queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "docs" / "k8s"
#: The metadata keys each trigger type cannot do without (KEDA 2.x scalers).
REQUIRED: dict[str, set[str]] = {
    "prometheus": {"serverAddress", "query", "threshold"},
    "rabbitmq": {"queueName", "mode", "value"},
    "metrics-api": {"url", "valueLocation", "targetValue"},
}
METRIC_TYPES = {"Value", "AverageValue"}


def documents(name: str) -> list[dict[str, Any]]:
    with (K8S / name).open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def scaled_object_files() -> list[str]:
    return sorted(path.name for path in K8S.glob("keda-*.yaml"))


def test_both_keda_recipes_and_the_hpa_recipe_ship() -> None:
    """The files docs/scaling.md includes are there."""
    assert scaled_object_files() == ["keda-metrics-api.yaml", "keda-scaledobject.yaml"]
    assert (K8S / "hpa-external.yaml").is_file()


@pytest.mark.parametrize("name", scaled_object_files())
def test_a_scaled_object_has_what_keda_requires(name: str) -> None:
    """apiVersion keda.sh/v1alpha1, kind ScaledObject, a target name, and for every trigger
    its type, the metadata keys that type requires, a metricType the HPA knows, and for
    rabbitmq a host: in its metadata or from a TriggerAuthentication in the same file."""
    docs = documents(name)
    [scaled] = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    auths = {
        doc["metadata"]["name"]: {ref["parameter"] for ref in doc["spec"]["secretTargetRef"]}
        for doc in docs
        if doc["kind"] == "TriggerAuthentication"
    }
    assert all(doc["apiVersion"] == "keda.sh/v1alpha1" for doc in docs)
    assert scaled["spec"]["scaleTargetRef"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert triggers
    for trigger in triggers:
        kind = trigger["type"]
        assert kind in REQUIRED, kind
        metadata = trigger["metadata"]
        assert REQUIRED[kind] <= set(metadata), (kind, REQUIRED[kind] - set(metadata))
        # KEDA reads every metadata value as a string: a bare 2 is rejected
        assert all(isinstance(value, str) for value in metadata.values()), metadata
        assert trigger.get("metricType", "AverageValue") in METRIC_TYPES
        if kind == "rabbitmq":
            provided = set(metadata)
            if "authenticationRef" in trigger:
                provided |= auths[trigger["authenticationRef"]["name"]]
            assert provided & {"host", "hostFromEnv"}, trigger
            assert metadata["mode"] in ("QueueLength", "MessageRate")


@pytest.mark.parametrize("name", scaled_object_files())
def test_scale_from_zero_has_a_broker_side_trigger_on_the_work_queue(name: str) -> None:
    """minReplicaCount 0 comes with a rabbitmq trigger (no worker runs to report a wait) on
    one work queue by name: no regex, which would count the delay-level queues."""
    [scaled] = [doc for doc in documents(name) if doc["kind"] == "ScaledObject"]
    assert scaled["spec"]["minReplicaCount"] == 0
    [rabbit] = [t for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
    queue = rabbit["metadata"]["queueName"]
    assert rabbit["metadata"].get("useRegex", "false") == "false"
    assert ".delay." not in queue
    assert not queue.endswith((".dlq", ".quarantine"))


def test_the_wait_trigger_is_a_value_metric_and_the_scale_trigger_reads_suggested_workers() -> None:
    """The Prometheus wait trigger uses metricType Value (replicas x wait / target); the
    metrics-api one reads suggested_workers from /scale as an AverageValue of 1."""
    [prom] = [doc for doc in documents("keda-scaledobject.yaml") if doc["kind"] == "ScaledObject"]
    [wait] = [
        t
        for t in prom["spec"]["triggers"]
        if t["type"] == "prometheus" and "oldest_wait" in t["metadata"]["query"]
    ]
    assert wait["metricType"] == "Value"
    [api] = [doc for doc in documents("keda-metrics-api.yaml") if doc["kind"] == "ScaledObject"]
    [scale] = [t for t in api["spec"]["triggers"] if t["type"] == "metrics-api"]
    assert "/scale" in scale["metadata"]["url"]
    assert scale["metadata"]["valueLocation"].endswith(".suggested_workers")
    assert (scale["metricType"], scale["metadata"]["targetValue"]) == ("AverageValue", "1")


def test_the_hpa_recipe_has_what_autoscaling_v2_requires() -> None:
    """autoscaling/v2 HorizontalPodAutoscaler: a target with kind and name, maxReplicas, and
    External metrics each with a name and a target whose type matches its value field."""
    [hpa] = [doc for doc in documents("hpa-external.yaml") if doc["kind"] != "ConfigMap"]
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["kind"]
    assert spec["scaleTargetRef"]["name"]
    assert spec["maxReplicas"] >= spec.get("minReplicas", 1) >= 1
    assert spec["metrics"]
    field = {"Value": "value", "AverageValue": "averageValue"}
    for metric in spec["metrics"]:
        assert metric["type"] == "External"
        external = metric["external"]
        assert external["metric"]["name"].startswith("aqueue_")
        target = external["target"]
        assert field[target["type"]] in target, target
