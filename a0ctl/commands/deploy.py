"""``a0ctl deploy validate``: deploy/kubernetes checked offline against the schemas of
Kubernetes, Strimzi and KEDA."""

from __future__ import annotations

import typer
from rich.table import Table

from a0ctl.console import ExitCode, JsonOption, console, errors_to_exit, fail, print_json, settings
from a0ctl.deploy.validate import GENERATED, RENDER_CLUSTER, RENDER_ENV, validate

app = typer.Typer(help="Deployment beyond one machine (deploy/kubernetes).", no_args_is_help=True)


@app.command("validate")
def validate_command(
    json_out: JsonOption = False,
) -> None:
    """Build deploy/kubernetes with kustomize and check each resource with kubeconform.

    Builds kubeconform and kustomize with `go install` and makes the schemas once, into ~/.cache/a0; offline after that. Exit 1 when a resource is invalid or the generated topics-and-users.yaml differs from topics.yaml.

    Example: a0ctl deploy validate
    """
    with errors_to_exit():
        report = validate(settings())
    if json_out:
        print_json(report)
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
            ExitCode.FAILED,
            f"{GENERATED} differs from topics.yaml",
            f"run: a0ctl topics render --format strimzi --env {RENDER_ENV} --cluster {RENDER_CLUSTER} "
            f"-o {GENERATED}",
        )
    if not report.ok:
        fail(
            ExitCode.FAILED,
            f"{len(report.problems)} resource(s) invalid" if report.problems else "no resources found",
            "fix the resources the table marks, then run `a0ctl deploy validate` again",
        )
