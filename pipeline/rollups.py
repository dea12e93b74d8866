"""Org rollups: each org's figures with its descendants', computed in ClickHouse.

The pipeline writes one row per directed pair window; rolling those up to
every ancestor in the pipeline would multiply the rows written by the depth
of the hierarchy on both sides. Instead each worker writes the registry's
lineage on start (this module, pure), and the view ``org_rollups_latest``
(:mod:`pipeline.sinks.views`) joins pair windows with it:

- ``org_lineage``: (registry version, member, org) for every org ``member``
  and every org it rolls up to (itself and its ancestors), with the member's
  community (own, else the nearest ancestor's, else ``external``);
- ``registries``: each registry version and when a worker loaded it; the
  newest is the current one.

Rollups therefore always follow the current registry, also for past windows:
move an org under another parent and its history moves with it.
Definitions: docs/metrics.md#rollups.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from pipeline.sinks.base import OrgLineageRow, RegistryRow, SinkBatch
from schemas.registry import Registry

EXTERNAL = "external"


def registry_version(registry: Registry) -> str:
    """A content hash of the hierarchy and communities (names do not matter)."""
    orgs = sorted((o.id, o.parent, o.community) for o in registry.orgs.values())
    return hashlib.sha256(orjson.dumps(orgs)).hexdigest()[:16]


def lineage(registry: Registry, org: str) -> tuple[str, ...]:
    """The org and its ancestors, nearest first."""
    return (org, *registry.ancestors(org))


def community_of(registry: Registry, org: str) -> str:
    """Own community, else the nearest ancestor's, else external."""
    return next((registry.orgs[o].community for o in lineage(registry, org)
                 if registry.orgs[o].community), None) or EXTERNAL


def lineage_batch(registry: Registry, now: datetime) -> SinkBatch:
    """The rows a worker writes on start (idempotent: same registry, same rows)."""
    version = registry_version(registry)
    rows = [
        OrgLineageRow(version, member, org, community_of(registry, member), now)
        for member in sorted(registry.orgs)
        for org in lineage(registry, member)
    ]
    return SinkBatch(org_lineage=rows,
                     registries=[RegistryRow(version, len(registry.orgs), now)])
