"""The tool API of the executor and its built-in tools.

A tool is an object with a :class:`~services.common.tools.ToolSpec` (what the model
sees, shared with the worker through :mod:`services.common.tools`) and
``async run(arguments, ctx) -> str``. A failure the model or user should see is a
:class:`ToolError`; anything else is a bug of the tool. Tools come from
:func:`load_tools`: the built-ins below plus the entry point group ``a0.tools``.

Built-ins: ``calculator`` (arithmetic evaluated over the ``ast`` tree, never ``eval``),
``current_time`` and ``run_python`` (see :mod:`services.tool_executor.sandbox`).
"""

from __future__ import annotations

import ast
import logging
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field

from services.common.errors import A0Error
from services.common.tools import CALCULATOR, CURRENT_TIME, RUN_PYTHON, ToolSpec, plugin_tools
from services.tool_executor.sandbox import run_code
from services.tool_executor.sandbox_limits import SandboxError, SandboxLimits

log = logging.getLogger(__name__)


class ToolError(A0Error):
    """A tool failure to report to the model/user; ``str(err)`` is the message."""

    code: str = "tool_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ToolContext(BaseModel):
    """Who a call is for and the limits it runs under.

    Cancellation is the caller's: it cancels the asyncio task awaiting ``run``.
    ``on_spawn`` is told the pid of any child process a tool starts (tests, metrics).
    """

    call_id: str
    user_id: str
    conversation_id: str
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    on_spawn: Callable[[int], None] | None = None


@runtime_checkable
class Tool(Protocol):
    spec: ToolSpec

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str: ...


def _str_arg(arguments: Any, name: str, default: str | None = None) -> str:
    # Arguments come from a model: check them instead of trusting the schema.
    if not isinstance(arguments, dict):
        raise ToolError("arguments must be a JSON object")
    value = arguments.get(name, default)
    if value is None:
        raise ToolError(f"missing argument {name!r}")
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} must be a string")
    return value


# --- calculator ------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
# Bounds every integer result; stays well below Python's 4300-digit str() limit.
MAX_INT_BITS = 10_000

Number = int | float
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{name: getattr(math, name) for name in ("sqrt", "sin", "cos", "tan", "log", "exp")},
    "abs": abs,
    "round": round,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _check(value: object) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, int | float):
        return value
    # e.g. (-8) ** (1/3) is complex in Python
    raise ToolError("result is not a real number")


def _power(base: Number, exp: Number) -> Number:
    if abs(exp) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (max {MAX_EXPONENT})")
    # Estimate the size before computing: (9**999)**999 must fail fast, not hang.
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exp > MAX_INT_BITS:
            raise ToolError("result too large")
    return _check(base**exp)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"unsupported literal {node.value!r}: only numbers are allowed")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _check(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Attribute):
        raise ToolError("attribute access is not allowed")
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        allowed = ", ".join(sorted(_FUNCTIONS))
        raise ToolError(f"function {name!r} is not allowed (allowed: {allowed})")
    if node.keywords:
        raise ToolError("keyword arguments are not allowed")
    name = node.func.id
    args = [_eval(arg) for arg in node.args]
    if name == "round" and len(args) == 2:
        # round(5, -10**6) would build 10**10**6: bound the digits.
        if not isinstance(args[1], int) or abs(args[1]) > 100:
            raise ToolError("round() digits must be an integer between -100 and 100")
    try:
        return _check(_FUNCTIONS[name](*args))
    except TypeError as exc:
        raise ToolError(f"bad arguments to {name}(): {exc}") from None


def _format(value: Number) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            raise ToolError("result is not a number")
        if math.isinf(value):
            raise ToolError("result too large")
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    return str(value)


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression safely; the result formatted as text."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (max {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")  # parse only: no code object
    except SyntaxError as exc:
        raise ToolError(f"invalid expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # null bytes, parser depth limits
        raise ToolError("invalid expression") from None
    try:
        return _format(_eval(tree))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except ValueError as exc:  # math domain errors, e.g. sqrt(-1)
        raise ToolError(f"math error: {exc}") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None


class Calculator:
    spec = CALCULATOR

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return evaluate(_str_arg(arguments, "expression"))


# --- current_time ----------------------------------------------------------------------


class CurrentTime:
    spec = CURRENT_TIME

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        name = _str_arg(arguments, "timezone", "UTC").strip() or "UTC"
        if name.upper() == "UTC":
            tz: Any = UTC  # needs no tz database
        else:
            try:
                tz = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ToolError(f"unknown timezone {name!r} (use an IANA name like Europe/Paris)") from None
        return datetime.now(tz).isoformat(timespec="seconds")


# --- run_python ------------------------------------------------------------------------


class RunPython:
    spec = RUN_PYTHON

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        code = _str_arg(arguments, "code")
        try:
            return await run_code(code, ctx.limits, on_spawn=ctx.on_spawn)
        except SandboxError as exc:
            raise ToolError(str(exc), code=exc.kind) from None


calculator = Calculator()
current_time = CurrentTime()
run_python = RunPython()

BUILTINS: dict[str, Tool] = {"calculator": calculator, "current_time": current_time, "run_python": run_python}


def load_tools() -> dict[str, Tool]:
    """The built-ins plus every tool of the ``a0.tools`` entry point group, by spec name
    (see :func:`services.common.tools.plugin_tools`: built-ins cannot be shadowed)."""
    return {**BUILTINS, **plugin_tools()}
