"""``a0ctl deploy validate``: build deploy/kubernetes with kustomize and check every
resource with kubeconform against Kubernetes' schemas and the CRDs of Strimzi and KEDA,
offline once the schemas are cached; and check that the Strimzi resources generated
from topics.yaml are the ones committed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel, computed_field

from a0ctl import subprocesses
from a0ctl.deploy.schemas import ensure_crd_schemas, ensure_kubernetes_schemas
from a0ctl.errors import StackError
from a0ctl.runtime.artifacts import REPO_ROOT, go_install
from a0ctl.topics.model import load_topics_file
from a0ctl.topics.render import render
from services.common.settings import Settings

KUSTOMIZATION = REPO_ROOT / "deploy" / "kubernetes"
GENERATED = KUSTOMIZATION / "kafka" / "topics-and-users.yaml"
# How deploy/kubernetes renders topics.yaml (the header of the generated file says so too).
RENDER_ENV = "production"
RENDER_CLUSTER = "a0"


class ResourceResult(BaseModel):
    filename: str
    kind: str
    name: str
    version: str
    status: str  # statusValid | statusInvalid | statusError | statusSkipped
    msg: str = ""


class ValidationReport(BaseModel):
    """What ``deploy validate --json`` prints."""

    resources: list[ResourceResult]
    generated_up_to_date: bool

    @property
    def problems(self) -> list[ResourceResult]:
        return [r for r in self.resources if r.status != "statusValid"]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return bool(self.resources) and not self.problems and self.generated_up_to_date


# The Go tools the check runs: name -> (module, the setting that pins its version).
GO_TOOLS = {
    "kubeconform": ("github.com/yannh/kubeconform/cmd/kubeconform", "kubeconform_version"),
    "kustomize": ("sigs.k8s.io/kustomize/kustomize/v5", "kustomize_version"),
}


def go_tool(settings: Settings, name: str) -> Path:
    """kubeconform or kustomize at its pinned version, built once into the cache."""
    module, field = GO_TOOLS[name]
    version = getattr(settings.kubernetes, field)
    binary = settings.stack.cache_dir / f"{name}-{version}" / name
    return go_install(module, version, binary, service=name, setting=f"A0_K8S_{field.upper()}")


def build(settings: Settings, directory: Path = KUSTOMIZATION) -> str:
    """The manifests a ``kubectl apply -k`` of the directory would send."""
    return subprocesses.run(
        [go_tool(settings, "kustomize"), "build", directory],
        what=f"kustomize build {directory}",
        service="kustomize",
        hint="fix the kustomization or the file it names",
    ).stdout


def check_manifests(settings: Settings, manifests: str) -> list[ResourceResult]:
    """kubeconform's verdict on each resource (strict: unknown fields are errors, and a
    kind without a schema is an error too, never skipped)."""
    k8s = ensure_kubernetes_schemas(settings)
    crds = ensure_crd_schemas(settings)
    with tempfile.TemporaryDirectory() as work:
        argv = [
            str(go_tool(settings, "kubeconform")),
            "-strict",
            "-verbose",
            "-output",
            "json",
            "-kubernetes-version",
            settings.kubernetes.version,
            "-cache",
            work,
            "-schema-location",
            f"{k8s}/{{{{.NormalizedKubernetesVersion}}}}-standalone{{{{.StrictSuffix}}}}/"
            "{{.ResourceKind}}{{.KindSuffix}}.json",
            "-schema-location",
            f"{crds}/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
            "-",
        ]
        # Exit 1 when a resource is invalid: the report says which, so it is read either way.
        result = subprocesses.run(
            argv, what="kubeconform", service="kubeconform", check=False, input=manifests
        )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise StackError(
            f"kubeconform gave no report (exit {result.returncode}):\n{result.stderr.strip()}",
            service="kubeconform",
        ) from None
    return [ResourceResult.model_validate(entry) for entry in report.get("resources", [])]


def rendered_topics(settings: Settings) -> str:
    spec = load_topics_file(settings.stack.topics_file)
    return render(spec, "strimzi", RENDER_ENV, RENDER_CLUSTER)


def validate(settings: Settings) -> ValidationReport:
    committed = GENERATED.read_text() if GENERATED.exists() else ""
    return ValidationReport(
        resources=check_manifests(settings, build(settings)),
        generated_up_to_date=committed == rendered_topics(settings),
    )
