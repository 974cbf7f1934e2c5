"""The JSON schemas kubeconform checks deploy/kubernetes against, made once into
``~/.cache/a0/kubernetes-schemas``:

- Kubernetes' own kinds, from the ``kubernetes-validate`` package's JSON schemas, each
  made standalone (its definitions inlined), as kubeconform loads one file per kind.
- Strimzi's custom resources: the CRDs its own generator writes from its API model
  (``io.strimzi:api`` and ``io.strimzi:crd-generator`` from Maven Central,
  stack/strimzi/pom.xml).
- KEDA's custom resources: the CRDs in the ``github.com/kedacore/keda/v2`` Go module.

CRDs become JSON schemas the way kubeconform's ``openapi2jsonschema`` makes them: one
file per kind and version, ``additionalProperties: false`` on every object that lists
its properties (strict), and ``int-or-string`` as either.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from a0ctl import subprocesses
from a0ctl.errors import StackError
from a0ctl.runtime.artifacts import REPO_ROOT, find_binary
from services.common.settings import Settings

STRIMZI_POM = REPO_ROOT / "stack" / "strimzi" / "pom.xml"
# The Strimzi resources deploy/kubernetes uses, by the class the generator reads.
STRIMZI_KINDS = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
    "KafkaUser": "io.strimzi.api.kafka.model.user.KafkaUser",
}
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml")
DEFINITIONS_REF = "/api/_definitions.json#"


def schemas_root(settings: Settings) -> Path:
    return settings.stack.cache_dir / "kubernetes-schemas"


def kubernetes_schema_dir(settings: Settings) -> Path:
    """Where kubeconform finds ``v{version}-standalone-strict/{kind}-{group}-{version}.json``."""
    return schemas_root(settings) / "kubernetes"


def crd_schema_dir(settings: Settings) -> Path:
    """Where kubeconform finds ``{group}/{kind}_{version}.json`` of the custom resources."""
    k = settings.kubernetes
    return schemas_root(settings) / f"crds-strimzi-{k.strimzi_version}-keda-{k.keda_version}"


# --- Kubernetes' kinds ---------------------------------------------------------------
def _refs_to_local(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: value.replace(DEFINITIONS_REF, "#")
            if key == "$ref" and isinstance(value, str)
            else _refs_to_local(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_refs_to_local(item) for item in node]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                yield value.removeprefix("#/$defs/")
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def standalone(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A kind's schema with the definitions it reaches inlined under ``$defs``."""
    schema = _refs_to_local(schema)
    needed: dict[str, Any] = {}
    pending = list(_refs(schema))
    while pending:
        name = pending.pop()
        if name not in needed:
            needed[name] = definitions[name]
            pending.extend(_refs(needed[name]))
    return {**schema, "$defs": needed}


def ensure_kubernetes_schemas(settings: Settings) -> Path:
    version = settings.kubernetes.version
    target = kubernetes_schema_dir(settings) / f"v{version}-standalone-strict"
    if (target / ".complete").exists():
        return kubernetes_schema_dir(settings)
    source = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    if not source.is_dir():
        raise StackError(
            f"the kubernetes-validate package has no schemas for Kubernetes {version}",
            service="kubeconform",
            hint="set A0_K8S_VERSION to a version it ships, or upgrade it (scripts/bootstrap.sh)",
        )
    definitions = _refs_to_local(json.loads(source.joinpath("_definitions.json").read_text()))["$defs"]
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for entry in source.iterdir():
        schema = json.loads(entry.read_text()) if entry.name.endswith(".json") else None
        # Only the kinds a manifest can hold (they carry their group-version-kind).
        if isinstance(schema, dict) and "x-kubernetes-group-version-kind" in schema:
            (staging / entry.name).write_text(json.dumps(standalone(schema, definitions)))
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return kubernetes_schema_dir(settings)


# --- custom resources ------------------------------------------------------------------
def strict(node: Any) -> Any:
    """kubeconform's openapi2jsonschema: objects that list properties allow no others
    (unless they keep unknown fields), and ``int-or-string`` is either."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    converted = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in converted
        and "additionalProperties" not in converted
        and not converted.get("x-kubernetes-preserve-unknown-fields")
    ):
        converted["additionalProperties"] = False
    return converted


def crd_to_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{kind}_{version}.json`` → its JSON schema, for each version a CRD serves."""
    kind = crd["spec"]["names"]["kind"].lower()
    return {
        f"{kind}_{version['name']}.json": strict(version["schema"]["openAPIV3Schema"])
        for version in crd["spec"]["versions"]
        if version.get("served", True) and "schema" in version
    }


def _write_crds(documents: list[dict[str, Any]], target: Path) -> None:
    for crd in documents:
        group_dir = target / crd["spec"]["group"]
        group_dir.mkdir(parents=True, exist_ok=True)
        for name, schema in crd_to_schemas(crd).items():
            (group_dir / name).write_text(json.dumps(schema))


def strimzi_crds(settings: Settings, work: Path) -> list[dict[str, Any]]:
    """Strimzi's CRDs, written by its own generator from its API model."""
    version = settings.kubernetes.strimzi_version
    mvn = find_binary("mvn", "install Maven (apt-get install maven) or run scripts/bootstrap.sh", "strimzi")
    java = find_binary(
        "java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)", "strimzi"
    )
    libs = settings.stack.cache_dir / f"strimzi-{version}" / "libs"
    if not (libs.parent / ".complete").exists():
        shutil.rmtree(libs, ignore_errors=True)
        subprocesses.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(STRIMZI_POM),
                f"-Dstrimzi.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            what=f"resolving Strimzi {version} with Maven",
            service="strimzi",
            hint="check that Maven Central is reachable and A0_K8S_STRIMZI_VERSION names a release",
        )
        (libs.parent / ".complete").write_text(version)
    outputs = {kind: work / f"{kind}.yaml" for kind in STRIMZI_KINDS}
    subprocesses.run(
        [
            java,
            "-cp",
            f"{libs}/*",
            "io.strimzi.crdgenerator.CrdGenerator",
            "--yaml",
            "--crd-api-version",
            "v1",
            "--api-versions",
            "v1beta2",
            "--storage-version",
            "v1beta2",
            *(f"{cls}={outputs[kind]}" for kind, cls in STRIMZI_KINDS.items()),
        ],
        what="generating Strimzi's CRDs",
        service="strimzi",
        hint="A0_K8S_STRIMZI_VERSION names a Strimzi release whose generator takes these options",
    )
    return [yaml.safe_load(path.read_text()) for path in outputs.values()]


def keda_crds(settings: Settings) -> list[dict[str, Any]]:
    """KEDA's CRDs, as its Go module ships them (config/crd/bases)."""
    version = settings.kubernetes.keda_version
    go = find_binary("go", "install Go (apt-get install golang; scripts/bootstrap.sh does)", "keda")
    result = subprocesses.run(
        [go, "mod", "download", "-json", f"{KEDA_MODULE}@{version}"],
        what=f"downloading {KEDA_MODULE}@{version}",
        service="keda",
        hint="check the Go module proxy is reachable and A0_K8S_KEDA_VERSION names a release",
    )
    bases = Path(json.loads(result.stdout)["Dir"]) / "config" / "crd" / "bases"
    return [yaml.safe_load((bases / name).read_text()) for name in KEDA_CRDS]


def ensure_crd_schemas(settings: Settings) -> Path:
    target = crd_schema_dir(settings)
    if (target / ".complete").exists():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _write_crds([*strimzi_crds(settings, staging), *keda_crds(settings)], staging)
    for generated in staging.glob("*.yaml"):
        generated.unlink()
    (staging / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
