"""deploy/kubernetes: built with kustomize and validated offline with kubeconform against
Kubernetes' schemas and the CRDs of Strimzi and KEDA (made as ``a0ctl deploy validate``
makes them), its Strimzi topics and users exactly what topics.yaml renders, and the
probes, requests and disruption budgets every a0 workload needs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from a0ctl.deploy.validate import GENERATED, build, check_manifests, rendered_topics, validate
from a0ctl.topics.acls import desired_acls
from a0ctl.topics.model import load_topics_file
from services.common.settings import Settings, load_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

WORKLOADS = ("gateway", "conversation-worker", "tool-executor")


@pytest.fixture(scope="module")
def config() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def manifests(config: Settings) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(build(config)) if doc]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == kind}


def test_committed_strimzi_resources_are_what_topics_yaml_renders() -> None:
    assert GENERATED.read_text() == rendered_topics(load_settings()), (
        "deploy/kubernetes/kafka/topics-and-users.yaml is stale: run "
        "`a0ctl topics render --format strimzi --env production -o deploy/kubernetes/kafka/topics-and-users.yaml`"
    )


def test_every_resource_is_valid_against_kubernetes_strimzi_and_keda_schemas(config: Settings) -> None:
    report = validate(config)
    assert report.generated_up_to_date
    assert not report.problems, [f"{r.kind}/{r.name}: {r.status} {r.msg}" for r in report.problems]
    kinds = {r.kind for r in report.resources}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "Namespace",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ScaledObject",
        "TriggerAuthentication",
    } <= kinds


def test_an_unknown_field_or_kind_is_reported_not_skipped(config: Settings) -> None:
    broken = """
apiVersion: kafka.strimzi.io/v1beta2
kind: Kafka
metadata: {name: broken}
spec:
  kafka:
    listeners: [{name: plain, port: 9092, type: internal, tls: false}]
    replicationFactor: 3
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers: [{name: x, image: x, readinessProbe: {httpGet: {path: /ready}}}]
---
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: no-schema-for-this}
spec: {}
"""
    results = {(r.kind, r.name): r for r in check_manifests(config, broken)}
    kafka = results[("Kafka", "broken")]
    assert kafka.status == "statusInvalid" and "replicationFactor" in kafka.msg
    deployment = results[("Deployment", "broken")]
    assert deployment.status == "statusInvalid" and "port" in deployment.msg
    assert results[("ScaledJob", "no-schema-for-this")].status == "statusError"


def test_workloads_have_probes_requests_and_disruption_budgets(manifests: list[dict[str, Any]]) -> None:
    deployments = of_kind(manifests, "Deployment")
    budgets = of_kind(manifests, "PodDisruptionBudget")
    assert set(deployments) == set(WORKLOADS)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]
        # Each service connects as its own Kafka principal, with the password Strimzi made for it.
        env = {e["name"]: e for e in container["env"]}
        assert env["A0_KAFKA_SASL_USERNAME"]["value"] == name
        assert env["A0_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == name
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    for name, port in (("conversation-worker", 9101), ("tool-executor", 9102)):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["ports"][0]["containerPort"] == port
        assert container["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_workers_scale_on_the_lag_of_their_consumer_group(manifests: list[dict[str, Any]]) -> None:
    scaled = of_kind(manifests, "ScaledObject")["conversation-worker"]["spec"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "a0-conversation-worker"
    assert trigger["metadata"]["topic"] == "conversation.inbound"
    inbound = of_kind(manifests, "KafkaTopic")["conversation-inbound"]["spec"]
    assert scaled["maxReplicaCount"] == inbound["partitions"]


def test_kafka_users_carry_the_acls_of_topics_yaml(manifests: list[dict[str, Any]]) -> None:
    spec = load_topics_file(ROOT / "topics.yaml")
    users = of_kind(manifests, "KafkaUser")
    assert set(users) == set(spec.principals)
    rendered = {
        (name, acl["resource"]["type"], acl["resource"]["name"], operation)
        for name, user in users.items()
        for acl in user["spec"]["authorization"]["acls"]
        for operation in acl["operations"]
    }
    assert rendered == {(e.principal, e.resource_type, e.name, e.operation) for e in desired_acls(spec)}
    worker = {
        (a["resource"]["type"], a["resource"]["name"])
        for a in users["conversation-worker"]["spec"]["authorization"]["acls"]
    }
    assert ("group", "a0-conversation-worker") in worker
    assert ("topic", "tool.requests") not in {
        (a["resource"]["type"], a["resource"]["name"])
        for a in users["tool-executor"]["spec"]["authorization"]["acls"]
        if "Write" in a["operations"]
    }


def test_kafka_runs_kraft_node_pools_with_the_replication_of_production(
    manifests: list[dict[str, Any]],
) -> None:
    kafka = of_kind(manifests, "Kafka")["a0"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert kafka["spec"]["kafka"]["listeners"][0]["authentication"]["type"] == "scram-sha-512"
    pool = of_kind(manifests, "KafkaNodePool")["dual-role"]["spec"]
    assert pool["replicas"] == 3 and set(pool["roles"]) == {"controller", "broker"}
    for topic in of_kind(manifests, "KafkaTopic").values():
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2
