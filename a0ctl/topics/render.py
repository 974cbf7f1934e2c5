"""``a0ctl topics render``: topics.yaml as the resources of another system. Strimzi's
``KafkaTopic`` (one per topic of an environment) and ``KafkaUser`` (one per principal,
SCRAM-SHA-512, with its ACLs), so a Kubernetes deployment never restates them."""

from __future__ import annotations

from typing import Any, Literal

import yaml

from a0ctl.topics.acls import desired_acls
from a0ctl.topics.model import TopicsFile, resolve

RenderFormat = Literal["strimzi"]
STRIMZI_API = "kafka.strimzi.io/v1beta2"
HEADER = (
    "# Generated from topics.yaml by `a0ctl topics render --format strimzi --env {env} --cluster {cluster}`.\n"
    "# Do not edit: change topics.yaml and render again (a test checks the two agree).\n"
)


def strimzi_resources(spec: TopicsFile, env: str, cluster: str) -> list[dict[str, Any]]:
    labels = {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "a0"}
    resources: list[dict[str, Any]] = []
    for topic in resolve(spec, env):
        if topic.deleted:
            continue
        resources.append(
            {
                "apiVersion": STRIMZI_API,
                "kind": "KafkaTopic",
                # Kubernetes names cannot hold dots; spec.topicName keeps Kafka's name.
                "metadata": {"name": topic.name.replace(".", "-"), "labels": labels},
                "spec": {
                    "topicName": topic.name,
                    "partitions": topic.partitions,
                    "replicas": topic.replication_factor,
                    "config": {key: _config_value(value) for key, value in sorted(topic.configs.items())},
                },
            }
        )
    acls = desired_acls(spec)
    for principal in spec.principals:
        rules: dict[tuple[str, str], list[str]] = {}
        for entry in acls:
            if entry.principal == principal:
                rules.setdefault((entry.resource_type, entry.name), []).append(entry.operation)
        resources.append(
            {
                "apiVersion": STRIMZI_API,
                "kind": "KafkaUser",
                "metadata": {"name": principal, "labels": labels},
                "spec": {
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {
                        "type": "simple",
                        "acls": [
                            {
                                "resource": {"type": resource_type, "name": name, "patternType": "literal"},
                                "operations": operations,
                                "host": "*",
                            }
                            for (resource_type, name), operations in rules.items()
                        ],
                    },
                },
            }
        )
    return resources


def _config_value(value: str) -> int | str:
    """Strimzi checks config types: numbers as numbers."""
    return int(value) if value.lstrip("-").isdigit() else value


def render(spec: TopicsFile, fmt: RenderFormat, env: str, cluster: str) -> str:
    documents = strimzi_resources(spec, env, cluster)
    body = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=100)
    return HEADER.format(env=env, cluster=cluster) + "---\n" + body
