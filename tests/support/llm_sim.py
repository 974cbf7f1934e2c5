"""A second upstream simulator, started as a real process with a key only the test knows."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT


@dataclass
class SimProcess:
    base_url: str
    api_key: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_sim(log_dir: Path) -> Iterator[SimProcess]:
    port = free_port()
    api_key = "sk-test-" + secrets.token_urlsafe(24)
    log = log_dir / f"llm-sim-{port}.log"
    env = {**os.environ, "A0_LLM_SIM_PORT": str(port), "A0_LLM_SIM_API_KEY": api_key}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "a0ctl", "run", "llm-sim"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"llm-sim did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield SimProcess(base_url=base_url, api_key=api_key, log=log)
    finally:
        process.terminate()
        process.wait(10)
