"""``topics.yaml``: its schema, and loading it with errors that name the file and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from a0ctl.errors import TopicsFileError

ENVIRONMENTS = ("local", "staging", "production")

# Topic configs a0 manages, each with how a value is checked. Kafka names, Kafka semantics.
CONFIG_RULES: dict[str, tuple[str, Any]] = {
    "cleanup.policy": ("one of", {"delete", "compact", "compact,delete", "delete,compact"}),
    "retention.ms": ("integer >=", -1),
    "retention.bytes": ("integer >=", -1),
    "min.insync.replicas": ("integer >=", 1),
    "max.message.bytes": ("integer >=", 1024),
    "segment.bytes": ("integer >=", 1024 * 1024),
    "segment.ms": ("integer >=", 1),
    "min.compaction.lag.ms": ("integer >=", 0),
    "delete.retention.ms": ("integer >=", 0),
    "compression.type": ("one of", {"uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"}),
}


def normalise_config(key: str, value: Any) -> str:
    """Check one config value and return it as the string Kafka reports."""
    if key not in CONFIG_RULES:
        raise ValueError(f"unknown topic config {key!r}; expected one of: {', '.join(sorted(CONFIG_RULES))}")
    rule, arg = CONFIG_RULES[key]
    if rule == "one of":
        if str(value) not in arg:
            raise ValueError(f"{key} must be one of {sorted(arg)}, got {value!r}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < arg:
        raise ValueError(f"{key} must be >= {arg}, got {value}")
    return str(value)


def _normalise_configs(configs: dict[str, Any]) -> dict[str, str]:
    return {key: normalise_config(key, value) for key, value in configs.items()}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Overrides(Strict):
    partitions: int | None = Field(default=None, ge=1, le=10_000)
    replication_factor: int | None = Field(default=None, ge=1, le=32)
    configs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("configs")
    @classmethod
    def _configs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _normalise_configs(value)


class TopicDecl(Overrides):
    description: str = ""
    keyed_by: Literal["conversation_id"] | None = None
    deleted: bool = False
    environments: dict[Literal["local", "staging", "production"], Overrides] = Field(default_factory=dict)


class Defaults(Strict):
    replication_factor: int = Field(default=1, ge=1, le=32)
    configs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("configs")
    @classmethod
    def _configs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _normalise_configs(value)


# A principal or consumer group name: what Kafka, SCRAM and Kubernetes all accept.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"


class PrincipalDecl(Strict):
    """What one service may do: the topics it writes and reads, the groups it joins, and
    the topics and groups it may only describe (partitions, offsets, committed offsets)."""

    description: str = ""
    produce: list[str] = Field(default_factory=list)
    consume: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    describe: list[str] = Field(default_factory=list)
    describe_groups: list[str] = Field(default_factory=list)

    @field_validator("groups", "describe_groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if not re.match(NAME_PATTERN, group):
                raise ValueError(f"consumer group {group!r} must match {NAME_PATTERN}")
        return value


class TopicsFile(Strict):
    version: Literal[1]
    defaults: Defaults = Field(default_factory=Defaults)
    environments: dict[Literal["local", "staging", "production"], Overrides] = Field(default_factory=dict)
    topics: dict[str, TopicDecl]
    principals: dict[str, PrincipalDecl] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _principals_name_declared_topics(self) -> TopicsFile:
        for name, principal in self.principals.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"principal {name!r} must match {NAME_PATTERN}")
            for topic in (*principal.produce, *principal.consume, *principal.describe):
                if topic not in self.topics or self.topics[topic].deleted:
                    raise ValueError(
                        f"principal {name} names topic {topic!r}, which the file does not declare"
                    )
        return self


class DesiredTopic(BaseModel):
    """One topic as the file wants it in one environment."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    keyed: bool
    deleted: bool = False


def resolve(spec: TopicsFile, env: str) -> list[DesiredTopic]:
    if env not in ENVIRONMENTS:
        raise TopicsFileError(f"unknown environment {env!r}", hint=f"use one of: {', '.join(ENVIRONMENTS)}")
    env_over = spec.environments.get(env, Overrides())  # type: ignore[call-overload]
    desired = []
    for name, decl in spec.topics.items():
        topic_env = decl.environments.get(env, Overrides())  # type: ignore[call-overload]
        layers = [env_over, decl, topic_env]
        partitions = next((layer.partitions for layer in reversed(layers) if layer.partitions), None)
        if partitions is None:
            raise TopicsFileError(f"topic {name} has no partitions for environment {env}")
        replication = next(
            (layer.replication_factor for layer in reversed(layers) if layer.replication_factor),
            spec.defaults.replication_factor,
        )
        configs = dict(spec.defaults.configs)
        for layer in layers:
            configs.update(layer.configs)
        desired.append(
            DesiredTopic(
                name=name,
                partitions=partitions,
                replication_factor=replication,
                configs=configs,
                keyed=decl.keyed_by is not None,
                deleted=decl.deleted,
            )
        )
    return desired


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in the document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines.update(_line_index(value_node, (*path, key)))
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, index)))
    return lines


def load_topics_file(path: Path) -> TopicsFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopicsFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise TopicsFileError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return TopicsFile.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(node) if node is not None else {}
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            # pydantic appends the dict key for config errors; trim to what exists in the file.
            while loc and loc not in lines:
                loc = loc[:-1]
            line = lines.get(loc, 1)
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{path}:{line}: {where}: {message}")
        raise TopicsFileError(
            "topics file is invalid:\n" + "\n".join(problems),
            hint="see docs/topics.md for the schema",
        ) from None
