"""Start a real clickhouse-server (Debian's 18.16 here) on free loopback ports.

Used by integration and end-to-end tests; each server gets its own data dir
and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.broker import free_port, stop_process

CONFIG = """<yandex>
 <logger><level>warning</level><console>0</console>
  <log>{d}/log/server.log</log><errorlog>{d}/log/err.log</errorlog></logger>
 <listen_host>127.0.0.1</listen_host>
 <tcp_port>{tcp}</tcp_port><http_port>{http}</http_port>
 <path>{d}/data/</path><tmp_path>{d}/data/tmp/</tmp_path>
 <user_files_path>{d}/data/user_files/</user_files_path>
 <format_schema_path>{d}/data/format_schemas/</format_schema_path>
 <users_config>users.xml</users_config>
 <default_profile>default</default_profile><default_database>default</default_database>
 <mark_cache_size>268435456</mark_cache_size><timezone>UTC</timezone>
</yandex>
"""
USERS = """<yandex>
 <profiles><default><allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type></default></profiles>
 <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
  <profile>default</profile><quota>default</quota></default></users>
 <quotas><default/></quotas>
</yandex>
"""


def server_binary() -> str | None:
    return shutil.which("clickhouse-server") or (
        "/usr/bin/clickhouse-server" if Path("/usr/bin/clickhouse-server").exists() else None
    )


@contextlib.contextmanager
def clickhouse_server(workdir: Path, timeout_s: float = 30.0) -> Iterator[tuple[int, int]]:
    """Run a server in ``workdir``; yields (tcp_port, http_port)."""
    binary = server_binary()
    if binary is None:
        raise RuntimeError("clickhouse-server is not installed (apt-get install clickhouse-server)")
    tcp, http = free_port(), free_port()
    (workdir / "log").mkdir(parents=True, exist_ok=True)
    (workdir / "config.xml").write_text(CONFIG.format(d=workdir, tcp=tcp, http=http))
    (workdir / "users.xml").write_text(USERS)
    out = open(workdir / "log" / "stdout.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config-file={workdir / 'config.xml'}"],
        cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited ({proc.returncode}): "
                    + (workdir / "log" / "stdout.log").read_text(errors="replace")[-2000:]
                )
            ping = f"http://127.0.0.1:{http}/ping"
            with contextlib.suppress(OSError), urllib.request.urlopen(ping, timeout=1) as r:
                if r.read().strip() == b"Ok.":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"clickhouse-server not ready on {http} in {timeout_s}s")
            time.sleep(0.1)
        yield tcp, http
    finally:
        stop_process(proc, grace_s=15)
        out.close()
