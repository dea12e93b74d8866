"""The registry lineage the org rollups are computed from (pipeline.rollups)."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.rollups import community_of, lineage_batch, registry_version
from pipeline.sinks.base import OrgLineageRow, RegistryRow
from schemas.registry import Org, Registry

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def registry(**parents: str | None) -> Registry:
    orgs = {
        "uni": Org("uni", "Example University", community="internal"),
        "med": Org("med", "Medical School", parent=parents.get("med", "uni")),
        "lab": Org("lab", "Lab", parent="med", community="external"),
        "ext": Org("ext", "City Press"),
    }
    return Registry(orgs, {}, {}, {})


def test_every_org_rolls_up_to_itself_and_its_ancestors_with_its_community() -> None:
    reg = registry()
    batch = lineage_batch(reg, NOW)
    version = registry_version(reg)
    assert batch.registries == [RegistryRow(version, 4, NOW)]
    assert batch.org_lineage == [
        OrgLineageRow(version, "ext", "ext", "external", NOW),  # none anywhere: external
        OrgLineageRow(version, "lab", "lab", "external", NOW),  # its own
        OrgLineageRow(version, "lab", "med", "external", NOW),
        OrgLineageRow(version, "lab", "uni", "external", NOW),
        OrgLineageRow(version, "med", "med", "internal", NOW),  # none: uni's
        OrgLineageRow(version, "med", "uni", "internal", NOW),
        OrgLineageRow(version, "uni", "uni", "internal", NOW),
    ]
    assert [community_of(reg, o) for o in ("uni", "med", "lab", "ext")] == [
        "internal", "internal", "external", "external"]


def test_the_version_follows_the_hierarchy_not_the_names() -> None:
    reg = registry()
    renamed = Registry({k: Org(o.id, o.name.upper(), o.parent, o.community)
                        for k, o in reg.orgs.items()}, {}, {}, {})
    assert registry_version(renamed) == registry_version(reg)
    assert registry_version(registry(med=None)) != registry_version(reg)
    assert lineage_batch(reg, NOW) == lineage_batch(reg, NOW)  # idempotent rows
