"""The cluster's side of ACLs as code, through Kafka's admin API (kafka-python: aiokafka
has no ACL or SCRAM requests): read the ACLs a0 manages, grant and revoke them, and
set each principal's SCRAM credential."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import get_args

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka.errors import KafkaError

from a0ctl.errors import StackError, TopicPlanError
from a0ctl.topics.acls import AclChange, AclEntry, Operation
from a0ctl.topics.admin import kafka_unreachable
from services.common.kafka import client_options
from services.common.settings import Settings

RESOURCE_TYPES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
OPERATIONS = {name: ACLOperation[name.upper()] for name in get_args(Operation)}


@contextmanager
def acl_admin(settings: Settings) -> Iterator[KafkaAdminClient]:
    try:
        admin = KafkaAdminClient(
            **client_options(settings), request_timeout_ms=10_000, client_id="a0ctl-acls"
        )
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    try:
        yield admin
    finally:
        admin.close()


def _binding(entry: AclEntry) -> ACL:
    return ACL(
        principal=f"User:{entry.principal}",
        host="*",
        operation=OPERATIONS[entry.operation],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(RESOURCE_TYPES[entry.resource_type], entry.name),
    )


def live_acls(admin: KafkaAdminClient) -> list[AclEntry]:
    """The allow rules on literal topic and group names for user principals: what the
    file can express. Anything else on the cluster is not a0's."""
    found: list[AclEntry] = []
    for kind, resource_type in RESOURCE_TYPES.items():
        acls, error = admin.describe_acls(
            ACLFilter(
                principal=None,
                host=None,
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ALLOW,
                resource_pattern=ResourcePatternFilter(resource_type, None, ACLResourcePatternType.LITERAL),
            )
        )
        if error is not None and error.errno:
            raise TopicPlanError(f"describing ACLs failed: {error}")
        for acl in acls:
            operation = acl.operation.name.capitalize()
            if acl.principal.startswith("User:") and operation in OPERATIONS and acl.host == "*":
                found.append(
                    AclEntry(
                        principal=acl.principal.removeprefix("User:"),
                        resource_type=kind,  # type: ignore[arg-type]
                        name=acl.resource_pattern.resource_name,
                        operation=operation,  # type: ignore[arg-type]
                    )
                )
    return found


def apply_acl_changes(admin: KafkaAdminClient, changes: list[AclChange]) -> None:
    grants = [_binding(c.entry) for c in changes if c.action == "grant"]
    if grants:
        result = admin.create_acls(grants)
        if result.get("failed"):
            raise TopicPlanError(f"granting ACLs failed: {result['failed']}")
    revokes = [_binding(c.entry) for c in changes if c.action == "revoke"]
    if revokes:
        filters = [
            ACLFilter(
                principal=b.principal,
                host=b.host,
                operation=b.operation,
                permission_type=b.permission_type,
                resource_pattern=ResourcePatternFilter(
                    b.resource_pattern.resource_type,
                    b.resource_pattern.resource_name,
                    ACLResourcePatternType.LITERAL,
                ),
            )
            for b in revokes
        ]
        for _filter, _matched, error in admin.delete_acls(filters):
            if error is not None and error.errno:
                raise TopicPlanError(f"revoking ACLs failed: {error}")


def set_scram_credentials(admin: KafkaAdminClient, settings: Settings, passwords: dict[str, str]) -> None:
    """Create or update each principal's SCRAM credential (the password from conf/env)."""
    mechanism = ScramMechanism[settings.kafka.sasl_mechanism.replace("-", "_")]
    errors = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, mechanism, password) for user, password in passwords.items()]
    )
    failed = {user: error for user, error in (errors or {}).items() if error}
    if failed:
        raise StackError(f"setting SCRAM credentials failed: {failed}", service="kafka")
