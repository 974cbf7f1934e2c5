"""``a0ctl run SERVICE``: run one of a0's services in the foreground (what the local
runtime supervises and what the compose services call)."""

from __future__ import annotations

import importlib
from enum import StrEnum
from typing import Annotated

import typer

from a0ctl.console import errors_to_exit, settings
from services.common.metrics import tune_gc


class Service(StrEnum):
    gateway = "gateway"
    conversation_worker = "conversation-worker"
    tool_executor = "tool-executor"
    llm_sim = "llm-sim"


ENTRY_POINTS = {
    Service.gateway: "services.gateway.main",
    Service.conversation_worker: "services.conversation_worker.main",
    Service.tool_executor: "services.tool_executor.main",
    Service.llm_sim: "services.llm_sim.main",
}


def run(service: Annotated[Service, typer.Argument(help="The service to run.")]) -> None:
    """Run one service in the foreground until interrupted.

    Example: a0ctl run gateway
    """
    module = importlib.import_module(ENTRY_POINTS[service])
    tune_gc()  # after the service's modules are loaded: they are frozen out of collections
    with errors_to_exit():
        module.serve(settings())


# ``a0ctl run`` on its own, without the rest of the CLI: a0ctl/__main__.py.
app = typer.Typer(name="run", add_completion=False, rich_markup_mode="rich")
app.command()(run)
