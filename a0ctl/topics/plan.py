"""The plan: what ``topics apply`` would change on the cluster, computed from the file
and the cluster's live state. Pure code: it takes both states and returns the changes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, computed_field

from a0ctl.topics.acls import AclChange
from a0ctl.topics.model import DesiredTopic

Action = Literal["create", "alter_config", "increase_partitions", "delete", "refused"]


class LiveTopic(BaseModel):
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


class TopicChange(BaseModel):
    topic: str
    action: Action
    detail: str
    partitions: int | None = None
    replication_factor: int | None = None
    configs: dict[str, dict[str, str | None]] = Field(default_factory=dict)  # key -> {"old", "new"}
    requires_flag: str | None = None  # --allow-delete / --allow-repartition


class TopicPlan(BaseModel):
    env: str
    changes: list[TopicChange]
    unchanged: list[str]
    unmanaged: list[str]
    # ACLs of topics.yaml's principals (only where the broker enforces ACLs, with SASL).
    acls_enforced: bool = False
    acls: list[AclChange] = Field(default_factory=list)
    unmanaged_acls: list[str] = Field(default_factory=list)

    @property
    def refused(self) -> list[TopicChange]:
        return [change for change in self.changes if change.action == "refused"]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def has_changes(self) -> bool:
        return bool(self.changes or self.acls)


def compute_plan(
    desired: list[DesiredTopic],
    live: dict[str, LiveTopic],
    env: str,
    *,
    allow_delete: bool = False,
    allow_repartition: bool = False,
) -> TopicPlan:
    changes: list[TopicChange] = []
    unchanged: list[str] = []
    for topic in desired:
        found = topic_changes(
            topic, live.get(topic.name), allow_delete=allow_delete, allow_repartition=allow_repartition
        )
        if found:
            changes.extend(found)
        elif not topic.deleted:
            unchanged.append(topic.name)
    declared = {topic.name for topic in desired}
    unmanaged = sorted(name for name in live if name not in declared and not name.startswith("__"))
    return TopicPlan(env=env, changes=changes, unchanged=unchanged, unmanaged=unmanaged)


def topic_changes(
    topic: DesiredTopic, current: LiveTopic | None, *, allow_delete: bool, allow_repartition: bool
) -> list[TopicChange]:
    """What one declared topic needs: deleted, created, or its shape and configs changed."""
    if topic.deleted:
        if current is None:
            return []
        return [
            TopicChange(
                topic=topic.name,
                action="delete" if allow_delete else "refused",
                detail="delete topic and all its records"
                + ("" if allow_delete else ": refused without --allow-delete"),
                requires_flag="--allow-delete",
            )
        ]
    if current is None:
        return [
            TopicChange(
                topic=topic.name,
                action="create",
                detail=f"create with {topic.partitions} partitions, replication {topic.replication_factor}",
                partitions=topic.partitions,
                replication_factor=topic.replication_factor,
                configs={key: {"old": None, "new": value} for key, value in topic.configs.items()},
            )
        ]
    changes = shape_changes(topic, current, allow_repartition=allow_repartition)
    diff = {
        key: {"old": current.configs.get(key), "new": value}
        for key, value in topic.configs.items()
        if current.configs.get(key) != value
    }
    if diff:
        changes.append(
            TopicChange(
                topic=topic.name,
                action="alter_config",
                detail=", ".join(f"{k}: {v['old']} → {v['new']}" for k, v in diff.items()),
                configs=diff,
            )
        )
    return changes


def shape_changes(topic: DesiredTopic, current: LiveTopic, *, allow_repartition: bool) -> list[TopicChange]:
    """Replication factor and partition count: what Kafka can change in place, and what not."""
    changes: list[TopicChange] = []
    if topic.replication_factor != current.replication_factor:
        changes.append(
            TopicChange(
                topic=topic.name,
                action="refused",
                detail=f"replication factor {current.replication_factor} → {topic.replication_factor}: "
                "Kafka cannot change it in place (reassign partitions instead)",
            )
        )
    if topic.partitions < current.partitions:
        changes.append(
            TopicChange(
                topic=topic.name,
                action="refused",
                detail=f"partitions {current.partitions} → {topic.partitions}: Kafka cannot decrease "
                "partitions (create a new topic and migrate)",
            )
        )
    elif topic.partitions > current.partitions:
        why = (
            "moves conversation keys to other partitions and breaks per-conversation ordering "
            "while old records drain"
        )
        allowed = allow_repartition or not topic.keyed
        changes.append(
            TopicChange(
                topic=topic.name,
                action="increase_partitions" if allowed else "refused",
                detail=f"partitions {current.partitions} → {topic.partitions}"
                + ("" if allowed else f": {why}; refused without --allow-repartition"),
                partitions=topic.partitions,
                requires_flag="--allow-repartition" if topic.keyed else None,
            )
        )
    return changes
