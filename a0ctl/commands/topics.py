"""``a0ctl topics plan | apply | describe | lag``: topics as code, from topics.yaml."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, computed_field
from rich.table import Table

from a0ctl.console import ExitCode, JsonOption, console, errors_to_exit, print_json, settings
from a0ctl.topics.admin import PartitionLag, TopicDescription, consumer_lag, describe_topics
from a0ctl.topics.apply import plan_topics
from a0ctl.topics.model import load_topics_file
from a0ctl.topics.plan import TopicPlan
from a0ctl.topics.render import RenderFormat, render

app = typer.Typer(
    help="Topics as code: compare topics.yaml with the cluster and apply it.", no_args_is_help=True
)

FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Topics file (default: topics.yaml).")]
EnvOpt = Annotated[
    str | None, typer.Option("--env", "-e", help="local | staging | production (default: A0_ENV).")
]
ACTION_STYLE = {
    "create": "green",
    "alter_config": "yellow",
    "increase_partitions": "yellow",
    "delete": "red",
    "refused": "red",
}


def render_plan(plan: TopicPlan) -> None:
    if not plan.has_changes:
        console.print(f"[green]No changes.[/] topics.yaml ({plan.env}) matches the cluster.")
    else:
        table = Table(title=f"topics plan ({plan.env})", title_justify="left")
        table.add_column("topic")
        table.add_column("action")
        table.add_column("change")
        for change in plan.changes:
            style = ACTION_STYLE[change.action]
            table.add_row(change.topic, f"[{style}]{change.action}[/]", change.detail)
        console.print(table)
    if plan.unchanged:
        console.print(f"unchanged: {', '.join(plan.unchanged)}", highlight=False)
    if plan.unmanaged:
        console.print(f"[dim]on the cluster, not in the file (left alone): {', '.join(plan.unmanaged)}[/]")
    if not plan.acls_enforced:
        console.print("[dim]ACLs: not enforced (A0_KAFKA_SECURITY_PROTOCOL=PLAINTEXT)[/]")
    elif plan.acls:
        table = Table(title=f"ACL plan ({plan.env})", title_justify="left")
        table.add_column("principal")
        table.add_column("action")
        table.add_column("change")
        for acl_change in plan.acls:
            style = "green" if acl_change.action == "grant" else "red"
            table.add_row(
                acl_change.entry.principal, f"[{style}]{acl_change.action}[/]", acl_change.entry.describe()
            )
        console.print(table)
    else:
        console.print("[green]ACLs match.[/] every principal has exactly what topics.yaml grants.")
    if plan.unmanaged_acls:
        console.print(
            f"[dim]ACLs of principals not in the file (left alone): {'; '.join(plan.unmanaged_acls)}[/]"
        )


class TopicDescriptions(BaseModel):
    """What ``topics describe --json`` prints."""

    topics: list[TopicDescription]


class ConsumerLag(BaseModel):
    """What ``topics lag --json`` prints: every partition of every group, and their sum."""

    lag: list[PartitionLag]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return sum(row.lag for row in self.lag)


@app.command()
def plan(
    file: FileOpt = None,
    env: EnvOpt = None,
    json_out: JsonOption = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0: no changes, 2: changes pending, 1: error.")
    ] = False,
) -> None:
    """Show what `apply` would change on the cluster.

    Example: a0ctl topics plan --env local --detailed-exitcode
    """
    with errors_to_exit():
        result = asyncio.run(plan_topics(settings(), file, env))
    if json_out:
        print_json(result)
    else:
        render_plan(result)
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(ExitCode.CHANGES_PENDING)


@app.command()
def apply(
    file: FileOpt = None,
    env: EnvOpt = None,
    allow_delete: Annotated[bool, typer.Option("--allow-delete", help="Carry out topic deletions.")] = False,
    allow_repartition: Annotated[
        bool,
        typer.Option(
            "--allow-repartition",
            help="Allow more partitions on keyed topics (breaks ordering while old records drain).",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Make the cluster match topics.yaml (idempotent). Refuses what loses data or Kafka cannot do.

    Example: a0ctl topics apply --env local
    """
    with errors_to_exit():
        result = asyncio.run(
            plan_topics(
                settings(),
                file,
                env,
                allow_delete=allow_delete,
                allow_repartition=allow_repartition,
                apply=True,
            )
        )
    if json_out:
        print_json(result)
        return
    render_plan(result)
    if result.has_changes:
        console.print("[green]Applied.[/]")


@app.command()
def describe(
    topic: Annotated[str | None, typer.Argument(help="One topic (default: all).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Partitions, leaders, replicas, configs and end offsets of topics on the cluster.

    Example: a0ctl topics describe conversation.inbound --json
    """
    with errors_to_exit():
        topics = asyncio.run(describe_topics(settings(), [topic] if topic else None))
    if json_out:
        print_json(TopicDescriptions(topics=topics))
        return
    for described in topics:
        table = Table(title=described.name, title_justify="left")
        for column in ("partition", "leader", "replicas", "isr", "end offset"):
            table.add_column(column)
        for p in described.partitions:
            table.add_row(str(p.partition), str(p.leader), str(p.replicas), str(p.isr), str(p.end_offset))
        console.print(table)
        console.print("configs: " + ", ".join(f"{k}={v}" for k, v in sorted(described.configs.items())))


@app.command()
def lag(
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="One consumer group (default: all).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Lag of consumer groups, per partition (end offset minus committed offset).

    Example: a0ctl topics lag --group a0-conversation-worker
    """
    with errors_to_exit():
        rows = asyncio.run(consumer_lag(settings(), group))
    if json_out:
        print_json(ConsumerLag(lag=rows))
        return
    table = Table(title="consumer lag", title_justify="left")
    for column in ("group", "topic", "partition", "committed", "end offset", "lag", "oldest waiting"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r.group,
            r.topic,
            str(r.partition),
            str(r.committed),
            str(r.end_offset),
            str(r.lag),
            f"{r.lag_seconds:.1f}s" if r.lag else "-",
        )
    console.print(table)


@app.command("render")
def render_command(
    fmt: Annotated[RenderFormat, typer.Option("--format", help="What to render: strimzi.")] = "strimzi",
    file: FileOpt = None,
    env: Annotated[str, typer.Option("--env", "-e", help="local | staging | production.")] = "production",
    cluster: Annotated[str, typer.Option("--cluster", help="Name of the Strimzi Kafka resource.")] = "a0",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: standard output).")
    ] = None,
) -> None:
    """Render topics.yaml as Strimzi KafkaTopic and KafkaUser (ACL) resources.

    deploy/kubernetes/kafka/topics-and-users.yaml is this command's output; never edit it.

    Example: a0ctl topics render --format strimzi --env production -o deploy/kubernetes/kafka/topics-and-users.yaml
    """
    with errors_to_exit():
        text = render(load_topics_file(file or settings().stack.topics_file), fmt, env, cluster)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"wrote {output}", highlight=False)
