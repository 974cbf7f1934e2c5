"""``a0ctl deploy validate``: deploy/kubernetes checked offline against the schemas of
Kubernetes, Strimzi and KEDA."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from a0ctl.console import console, errors_to_exit, fail, print_json, settings
from a0ctl.deploy.validate import GENERATED, RENDER_CLUSTER, RENDER_ENV, validate

app = typer.Typer(help="Deployment beyond one machine (deploy/kubernetes).", no_args_is_help=True)


@app.command("validate")
def validate_command(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Build deploy/kubernetes with kustomize and check each resource with kubeconform.

    Builds kubeconform and kustomize with `go install` and makes the schemas once, into
    ~/.cache/a0; offline after that. Exit 1 when a resource is invalid or the generated
    topics-and-users.yaml differs from topics.yaml.

    Example: a0ctl deploy validate
    """
    with errors_to_exit():
        report = validate(settings())
    if json_out:
        print_json({**report.model_dump(), "ok": report.ok})
    else:
        table = Table(title="deploy/kubernetes", title_justify="left")
        for column in ("kind", "name", "result"):
            table.add_column(column)
        for r in report.resources:
            verdict = (
                "[green]valid[/]" if r.status == "statusValid" else f"[red]{r.status[6:].lower()}[/]: {r.msg}"
            )
            table.add_row(r.kind, r.name, verdict)
        console.print(table)
    if not report.generated_up_to_date:
        fail(
            f"{GENERATED} differs from topics.yaml; run: a0ctl topics render --format strimzi "
            f"--env {RENDER_ENV} --cluster {RENDER_CLUSTER} -o {GENERATED}"
        )
    if not report.ok:
        fail(
            f"{len(report.problems) or 'no'} resource(s) invalid" if report.problems else "no resources found"
        )
