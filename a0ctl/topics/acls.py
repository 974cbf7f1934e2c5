"""ACLs as code: the access each principal of ``topics.yaml`` is granted, as Kafka ACL
entries. Pure code: ``topics plan`` compares these with the cluster's, ``topics render``
turns them into Strimzi ``KafkaUser`` resources."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from a0ctl.topics.model import TopicsFile

ResourceType = Literal["topic", "group"]
Operation = Literal["Read", "Write", "Describe"]

# What each verb of topics.yaml grants, in Kafka's operation names.
PRODUCE: tuple[Operation, ...] = ("Write", "Describe")
CONSUME: tuple[Operation, ...] = ("Read", "Describe")
JOIN_GROUP: tuple[Operation, ...] = ("Read", "Describe")
DESCRIBE: tuple[Operation, ...] = ("Describe",)


class AclEntry(BaseModel):
    """One allow rule: ``principal`` may do ``operation`` on the named topic or group
    (literal name, from any host)."""

    model_config = ConfigDict(frozen=True)

    principal: str
    resource_type: ResourceType
    name: str
    operation: Operation

    def describe(self) -> str:
        return f"{self.operation} on {self.resource_type} {self.name}"


def desired_acls(spec: TopicsFile) -> list[AclEntry]:
    """Every ACL entry the file grants, sorted, without duplicates."""
    entries: set[AclEntry] = set()
    for principal, decl in spec.principals.items():
        grants: list[tuple[ResourceType, list[str], tuple[Operation, ...]]] = [
            ("topic", decl.produce, PRODUCE),
            ("topic", decl.consume, CONSUME),
            ("group", decl.groups, JOIN_GROUP),
            ("topic", decl.describe, DESCRIBE),
            ("group", decl.describe_groups, DESCRIBE),
        ]
        for resource_type, names, operations in grants:
            for name in names:
                for operation in operations:
                    entries.add(
                        AclEntry(
                            principal=principal, resource_type=resource_type, name=name, operation=operation
                        )
                    )
    return sort_acls(entries)


def sort_acls(entries: set[AclEntry] | list[AclEntry]) -> list[AclEntry]:
    return sorted(entries, key=lambda e: (e.principal, e.resource_type, e.name, e.operation))


class AclChange(BaseModel):
    action: Literal["grant", "revoke"]
    entry: AclEntry

    @property
    def detail(self) -> str:
        return f"{self.action} {self.entry.describe()}"


def compute_acl_changes(
    desired: list[AclEntry], live: list[AclEntry], principals: list[str]
) -> tuple[list[AclChange], list[str]]:
    """What makes the cluster's ACLs the file's: grants for what is missing, revokes for
    what a declared principal has beyond the file. ACLs of principals the file does not
    declare are returned as unmanaged, and left alone."""
    wanted, current = set(desired), set(live)
    changes = [AclChange(action="grant", entry=entry) for entry in sort_acls(wanted - current)]
    changes += [
        AclChange(action="revoke", entry=entry)
        for entry in sort_acls(current - wanted)
        if entry.principal in principals
    ]
    unmanaged = [
        f"User:{entry.principal} {entry.describe()}"
        for entry in sort_acls(current)
        if entry.principal not in principals
    ]
    return changes, unmanaged
