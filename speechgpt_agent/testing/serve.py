"""``speechgpt-agent serve`` in a child process, for tests and benchmarks: started on
127.0.0.1 with a free port, ready once ``/health`` answers, stopped by its pid.

The server runs in a process group of its own and the whole group is stopped, because
the vLLM engine's core and workers are child processes of the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "running_server", "serve_command", "start_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """``speechgpt-agent`` of this interpreter's environment (or ``python -m``)."""
    script = Path(sys.executable).with_name("speechgpt-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "speechgpt_agent.cli"]


@dataclass
class ServerProcess:
    """A running server: its process, base URL (``http://127.0.0.1:PORT``) and log file."""

    proc: subprocess.Popen
    url: str
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server's process group, then SIGKILL to whatever of it is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)


def start_server(log: str | os.PathLike, *args: str, env: Mapping[str, str] | None = None,
                 timeout_s: float = 180) -> ServerProcess:
    """Start ``speechgpt-agent serve --port FREE *args`` and wait for ``/health`` (bounded).

    Raises:
        RuntimeError: the server exited, or did not answer within ``timeout_s``; the
            message holds the end of its log.
    """
    import httpx

    port = free_port()
    log = Path(log)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*serve_command(), "serve", "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                                start_new_session=True)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not answer /health in {timeout_s:.0f} s:\n{server.log_tail()}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_server(log: str | os.PathLike, *args: str, env: Mapping[str, str] | None = None,
                   timeout_s: float = 180) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager that always stops it."""
    server = start_server(log, *args, env=env, timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()
