"""``reciprocity demo``: what a newcomer runs first must tell its story."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_run_until_drained import cli

pytestmark = pytest.mark.e2e


def section(stdout: str, title: str) -> list[str]:
    """The indented lines under a heading that starts with ``title``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            if out:
                break
            continue
        out.append(line.strip())
    return out


def test_seed_scenario_tells_its_story(tmp_path: Path) -> None:
    result = cli("demo", "--scenario", "seed", "--rate", "5000", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # the faculty's snubs and omissions come from its parent and central comms
    snubbers = {line.split()[0] for line in section(out, "its engagements nobody returned")}
    assert snubbers == {"uni", "comms"}
    posters = {line.split()[0] for line in section(out, "posts featuring its people")}
    assert posters == {"uni", "comms"}
    # reciprocity with every external partner is higher than with the parent
    r = {}
    for line in section(out, "reciprocity with each org"):
        match = re.match(r"(\S+)\s+given .* r (\d\.\d\d)", line)
        assert match, line
        r[match.group(1)] = float(match.group(2))
    partners = {"cityhosp", "natlab", "techco", "museum"}
    assert partners <= set(r)
    assert min(r[p] for p in partners) > r["uni"] + 0.5
    assert "(parent)" in next(line for line in section(out, "reciprocity with each org")
                              if line.startswith("uni "))
    assert "techco engaged sci" in out  # the partner that went quiet
