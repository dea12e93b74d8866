#!/usr/bin/env python3
"""Vendor the Compose Specification JSON Schema for the offline deploy tests.

Downloads the ``docker-compose==1.29.2`` wheel from PyPI with pip (into a
temporary directory, no dependencies, nothing installed), checks its SHA-256,
and copies ``compose/config/compose_spec.json`` out of it, byte for byte, to
``tests/fixtures/compose/compose_spec.json``. The committed copy is what
``tests/unit/deploy/test_compose_and_dockerfile.py`` validates against, so the
tests never need the network; run this only to refresh or re-verify it::

    python scripts/regenerate_compose_schema.py           # rewrite the copy
    python scripts/regenerate_compose_schema.py --check   # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "docker-compose"
VERSION = "1.29.2"
WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
# sha256 of the wheel as published on PyPI
WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
MEMBER = "compose/config/compose_spec.json"
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "fixtures" / "compose" / "compose_spec.json"


def download_wheel(dest: Path) -> Path:
    """The docker-compose wheel, downloaded by pip into ``dest`` and checked."""
    subprocess.run(  # noqa: S603 - fixed arguments, our own interpreter
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--dest", str(dest), f"{PACKAGE}=={VERSION}"],
        check=True,
    )
    wheel = dest / WHEEL
    if not wheel.is_file():
        found = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise SystemExit(f"expected {WHEEL}, pip downloaded {found}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def extract_schema() -> bytes:
    with (
        tempfile.TemporaryDirectory(prefix="compose-schema-") as tmp,
        zipfile.ZipFile(download_wheel(Path(tmp))) as wheel,
    ):
        return wheel.read(MEMBER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed copy instead of writing it")
    args = parser.parse_args(argv)
    schema = extract_schema()
    if args.check:
        if not TARGET.is_file() or TARGET.read_bytes() != schema:
            print(f"{TARGET.relative_to(ROOT)} differs from {MEMBER} in {WHEEL}")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is up to date")
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(schema)
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(schema)} bytes) from {WHEEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
