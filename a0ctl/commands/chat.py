"""``a0ctl chat``: chat with the stack in the terminal, through the gateway like any client."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from a0ctl.client import GatewayClient, GatewayError
from a0ctl.console import ExitCode, console, err_console, errors_to_exit, settings
from services.common.auth import mint_token
from services.common.settings import Settings

CANCEL_GRACE_S = 10.0
TOOL_OUTPUT_CHARS = 2000
# C0 controls but newline and tab, DEL and C1 controls: ESC starts the sequences that move
# the cursor, clear the screen, make links (OSC 8) or write the clipboard (OSC 52), and
# U+009B is a one-character CSI. Answers and tool output are text from outside: printed
# raw, they could do any of that to the user's terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without control characters, newline and tab aside."""
    return _CONTROL.sub("", text)


def _number(value: Any) -> str:
    """2.0 as 2, anything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return printable(str(value)) if value is not None else ""


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False) if not isinstance(value, str) else value


def _clip(text: str) -> str:
    return text if len(text) <= TOOL_OUTPUT_CHARS else text[:TOOL_OUTPUT_CHARS] + " …"


class TurnPrinter:
    """Renders one turn's events: answer text as it streams, tools as dim blocks."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.streamed = False
        self.mid_line = False
        self.outcome = "running"

    def _end_line(self) -> None:
        if self.mid_line:
            self.out.print()
            self.mid_line = False

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        payload: dict[str, Any] = event.get("payload") or {}
        if kind == "message.delta":
            text = printable(str(payload.get("text") or payload.get("delta") or ""))
            self.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
            self.streamed = self.streamed or bool(text)
            self.mid_line = bool(text) and not text.endswith("\n")
        elif kind == "tool.call":
            self._end_line()
            title = Text(f"tool call · {printable(str(payload.get('name', '?')))}")
            body = Text(printable(_pretty(payload.get("arguments", ""))))
            self.out.print(Panel(body, title=title, title_align="left", style="dim", expand=False))
        elif kind == "tool.progress":
            self._end_line()
            done, total = _number(payload.get("progress")), _number(payload.get("total"))
            share = f"{done}/{total}" if total else f"{done}"
            message = printable(str(payload.get("message") or ""))
            line = f"  … {printable(str(payload.get('name', '?')))}: {share}" + (
                f" · {message}" if message else ""
            )
            self.out.print(Text(line, style="dim"))
        elif kind == "tool.result":
            self._end_line()
            error = payload.get("error")
            if error:
                message = error.get("message", error) if isinstance(error, dict) else error
                body, style = Text(f"error: {_clip(printable(str(message)))}"), "dim red"
            else:
                output = _pretty(payload.get("output", payload.get("content", "")))
                body, style = Text(_clip(printable(output))), "dim"
            title = Text(f"tool result · {printable(str(payload.get('name', '?')))}")
            self.out.print(Panel(body, title=title, title_align="left", style=style, expand=False))
        elif kind == "message.completed":
            if not self.streamed and payload.get("content"):
                self.out.print(printable(str(payload["content"])), markup=False, highlight=False, end="")
                self.mid_line = True
            self._end_line()
            self.outcome = "completed"
        elif kind == "error":
            self._end_line()
            code = printable(str(payload.get("code", "error")))
            err_console.print(Text.assemble(("error", "bold red"), f" ({code}): "), end="")
            err_console.print(
                printable(str(payload.get("message", "the turn failed"))), markup=False, highlight=False
            )
            self.outcome = "error"
        elif kind == "cancelled":
            self._end_line()
            reason = printable(str(payload.get("reason", "cancelled")))
            self.out.print(Text.assemble(("cancelled", "yellow"), f" ({reason})"), highlight=False)
            self.outcome = "cancelled"


class ChatSession:
    def __init__(self, client: GatewayClient, conversation_id: str, timeout: float) -> None:
        self.client = client
        self.conversation_id = conversation_id
        self.timeout = timeout
        self.last_seq: int | None = None

    async def turn(self, content: str) -> str:
        """Send one message and render its turn; Ctrl-C asks the gateway to cancel it (a
        second Ctrl-C stops waiting). Returns the outcome: completed, error, cancelled..."""
        printer = TurnPrinter(console)
        loop = asyncio.get_running_loop()
        async with self.client.turn(self.conversation_id, content, after=self.last_seq) as turn:
            reader = asyncio.current_task()
            presses = 0

            def on_interrupt() -> None:
                nonlocal presses
                presses += 1
                if presses == 1:
                    err_console.print("\n[yellow]cancelling… (Ctrl-C again to stop waiting)[/]")
                    loop.create_task(self.client.cancel(self.conversation_id, turn.turn_id))
                elif reader is not None:
                    reader.cancel()

            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            try:
                async with asyncio.timeout(self.timeout):
                    async for event in turn:
                        printer.show(event)
            except TimeoutError:
                printer.outcome = "timeout"
                err_console.print(
                    f"\n[bold red]error:[/] no answer within {self.timeout:g} s (is the worker up?)"
                )
            except asyncio.CancelledError:
                if reader is not None:
                    reader.uncancel()
                printer.outcome = "interrupted"
            finally:
                loop.remove_signal_handler(signal.SIGINT)
                self.last_seq = turn.last_seq or self.last_seq
        return printer.outcome


def _exit_code(outcome: str) -> ExitCode:
    return {
        "completed": ExitCode.OK,
        "cancelled": ExitCode.INTERRUPTED,
        "interrupted": ExitCode.INTERRUPTED,
    }.get(outcome, ExitCode.FAILED)


def run_chat(
    settings: Settings, user: str, conversation: str | None, message: str | None, timeout: float
) -> int:
    token = mint_token(settings, user)
    with asyncio.Runner() as runner:
        client = GatewayClient(settings.gateway_url, token)
        try:
            if conversation is None:
                title = (message or "chat")[:60]
                conversation = runner.run(client.create_conversation(title))
            else:
                runner.run(client.get_conversation(conversation))  # exists, and is ours
            session = ChatSession(client, conversation, timeout)
            if message is not None:
                return _exit_code(runner.run(session.turn(message)))
            console.print(
                f"[dim]conversation {conversation} as {user} · Ctrl-C cancels an answer · Ctrl-D quits[/]",
                highlight=False,
            )
            while True:
                try:
                    text = console.input("[bold cyan]you>[/] ").strip()
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    return ExitCode.OK
                if text in ("/quit", "/exit"):
                    return ExitCode.OK
                if text:
                    try:
                        runner.run(session.turn(text))
                    except GatewayError as exc:  # e.g. 409 or 429: say so and keep chatting
                        err_console.print("[bold red]error:[/] ", end="")
                        err_console.print(printable(str(exc)), markup=False, highlight=False)
                    except KeyboardInterrupt:  # before the turn was under way
                        err_console.print("\n[yellow]interrupted[/]")
        finally:
            runner.run(client.aclose())


def chat(
    user: Annotated[
        str, typer.Option("--user", "-u", help="Who you chat as (a token is minted for them).")
    ] = "me",
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Continue this conversation (its id).")
    ] = None,
    message: Annotated[
        str | None,
        typer.Option("--message", "-m", help="One-shot: send this, print the answer, exit (1 if it failed)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up on an answer after this many seconds.")] = 300.0,
) -> None:
    """Chat with the stack in the terminal, through the gateway like any client.

    Answers stream in; tool calls and their results show as dim blocks, without the control characters (escape sequences) they may carry. Ctrl-C during an answer cancels that turn; Ctrl-D quits. With -m, one message is sent and the command exits 0 when it was answered, 130 when it was cancelled and 1 when it failed.

    Example: a0ctl chat -m "compute 6*7"   (or: a0ctl chat --user alice -c <conversation id>)
    """
    with errors_to_exit():
        code = run_chat(settings(), user, conversation, message, timeout)
    raise typer.Exit(code)
