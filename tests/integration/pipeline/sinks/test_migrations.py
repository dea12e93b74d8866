"""Migrations and views on both engines: chdb (modern) and clickhouse-server 18.16.

The views are checked on a small fixture whose figures are computed by hand.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.sinks import (
    AlertRow,
    Backend,
    OmissionRow,
    OrgLineageRow,
    PairWindowRow,
    PipelineBatchRow,
    RegistryRow,
    SinkBatch,
    SnubRow,
)
from pipeline.sinks.migrations import MIGRATIONS, MigrationError, Server, migrate, recorded
from pipeline.sinks.views import VIEWS

pytestmark = pytest.mark.integration
TODAY = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAY = timedelta(days=1)
NOW = TODAY + timedelta(hours=1)


@pytest.fixture
def store(bare_store: Backend) -> Backend:
    return bare_store


def server(backend: Backend) -> Server:
    return Server.parse(str(backend.query("SELECT version()")[0][0]))


def test_migrate_applies_each_migration_once_and_records_it(store: Backend) -> None:
    first = migrate(store)
    extras = "applied" if server(store).extras else "skipped"
    assert [(m.number, m.status) for m in first] == [(1, "applied"), (2, "applied"),
                                                     (3, extras)]
    assert [m.status for m in migrate(store)] == ["present"] * len(MIGRATIONS)
    done = recorded(store)
    assert {n: status for n, (_, status) in done.items()} == {1: "applied", 2: "applied",
                                                              3: extras}
    assert all(done[m.number][0] == m.checksum() for m in MIGRATIONS)
    for view in VIEWS:
        assert store.has_table(view.name), view.name


def test_extras_only_where_supported(store: Backend) -> None:
    migrate(store)
    create = str(store.query(f"SHOW CREATE TABLE {store.database}.pipeline_batches")[0][0])
    if server(store).extras:
        assert "LowCardinality(String)" in create and "TTL" in create
    else:
        assert "LowCardinality" not in create and "TTL" not in create


def test_a_changed_applied_migration_is_refused(store: Backend) -> None:
    migrate(store)
    edited = replace(MIGRATIONS[1], build=lambda target: ["SELECT 1"])
    with pytest.raises(MigrationError, match="002_views was applied with checksum"):
        migrate(store, migrations=(MIGRATIONS[0], edited, MIGRATIONS[2]))


def test_a_new_migration_is_applied_on_an_existing_store(store: Backend) -> None:
    migrate(store)
    extra = replace(MIGRATIONS[0], number=4, name="probe",
                    build=lambda target: [f"CREATE TABLE IF NOT EXISTS {target.database}.probe "
                                          "(x UInt8) ENGINE = MergeTree ORDER BY x"])
    statuses = [m.status for m in migrate(store, migrations=(*MIGRATIONS, extra))]
    assert statuses == ["present"] * 3 + ["applied"]
    assert store.has_table("probe")


# -- the views on a fixture ------------------------------------------------------------------


def pair(day: datetime, src: str, dst: str, likes: int, shares: int, version: int,
         reciprocated: int = 0, snubbed: int = 0, median: float | None = None,
         partition: int = 0, window: str = "1d") -> PairWindowRow:
    # value with the default weights: like 1, share 3
    return PairWindowRow(window, day, src, dst, "s", partition, 0, likes, shares, 0, 0, 0,
                         float(likes + 3 * shares), reciprocated, snubbed, median, version, NOW)


def lineage(registry: str, member: str, *orgs: str, community: str) -> list[OrgLineageRow]:
    return [OrgLineageRow(registry, member, org, community, NOW) for org in (member, *orgs)]


@pytest.fixture
def loaded(store: Backend) -> Backend:
    migrate(store)
    old = TODAY - 40 * DAY  # outside both rolling views
    batch = SinkBatch(
        pair_windows=[
            # a -> b today: an old version, then the newest (likes 2, shares 1: value 5)
            pair(TODAY, "a", "b", 1, 0, version=3),
            pair(TODAY, "a", "b", 2, 1, version=9, reciprocated=2, median=30.0),
            # b -> a three days ago: value 2; and 10 days ago (only in 30d): value 4
            pair(TODAY - 3 * DAY, "b", "a", 2, 0, version=4),
            pair(TODAY - 10 * DAY, "b", "a", 4, 0, version=5, reciprocated=1, median=60.0),
            # a -> c, 40 days ago: in neither rolling view
            pair(old, "a", "c", 7, 0, version=2, snubbed=7),
            # an hourly window never reaches the daily views
            pair(TODAY, "a", "b", 100, 0, version=99, window="1h"),
            # the same pair window from two partitions sums
            pair(TODAY - DAY, "c", "b", 1, 0, version=1, partition=0),
            pair(TODAY - DAY, "c", "b", 0, 1, version=1, partition=1),
        ],
        # registry "old" (loaded first) puts a under b; the current one, "new",
        # puts a under x; c has no community (external)
        org_lineage=[*lineage("old", "a", "b", community="internal"),
                     *lineage("new", "a", "x", community="internal"),
                     *lineage("new", "b", community="internal"),
                     *lineage("new", "c", community="external"),
                     *lineage("new", "x", community="internal")],
        registries=[RegistryRow("old", 4, NOW - DAY), RegistryRow("new", 4, NOW)],
        snubs=[
            SnubRow("e1", "a", "b", "like", 1.0, 2.0, TODAY + timedelta(hours=2), "s", NOW),
            SnubRow("e1", "a", "b", "like", 1.0, 2.0, TODAY + timedelta(hours=2), "s", NOW),
            SnubRow("e2", "a", "b", "share", 1.0, 2.0, TODAY + timedelta(hours=3), "s", NOW),
            SnubRow("e3", "c", "b", "like", 1.0, 2.0, TODAY - DAY, "s", NOW),
        ],
        omissions=[
            OmissionRow("p1", "a", "b", ["x"], 1.0, TODAY, "s", NOW),
            OmissionRow("p1", "a", "b", ["x"], 1.0, TODAY, "s", NOW),
            OmissionRow("p2", "a", "b", ["y"], 1.0, TODAY, "s", NOW),
        ],
        alerts=[AlertRow("snub:e1:a:b:like", "snub", "a", "b", 2.0, TODAY, "m", "{}", "s", NOW)
                for _ in range(2)],
        pipeline_batches=[
            PipelineBatchRow("s", 0, 0, 9, 10, 40, 1, 2, 1, TODAY.timestamp() - 5,
                             TODAY.timestamp() + 1, TODAY + timedelta(seconds=1)),
            # the same batch again, replayed longer: the newest (largest last offset) wins
            PipelineBatchRow("s", 0, 0, 19, 20, 80, 1, 2, 1, TODAY.timestamp() - 3,
                             TODAY.timestamp() + 2, TODAY + timedelta(seconds=2)),
            PipelineBatchRow("s", 1, 0, 4, 5, 5, 0, 0, 0, None,
                             TODAY.timestamp() + 3, TODAY + timedelta(seconds=3)),
        ],
    )
    store.write(batch)
    return store


def rows(backend: Backend, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in backend.query(sql.format(db=backend.database))]


def test_pair_windows_latest_takes_newest_versions_and_sums_partitions(loaded: Backend) -> None:
    got = rows(loaded, "SELECT src, dst, likes, shares, engagements, value, reciprocated, "
                       "median_reciprocate_s FROM {db}.pair_windows_latest WHERE window = '1d' "
                       "ORDER BY window_start, src")
    assert got == [("a", "c", 7, 0, 7, 7.0, 0, None), ("b", "a", 4, 0, 4, 4.0, 1, 60.0),
                   ("b", "a", 2, 0, 2, 2.0, 0, None), ("c", "b", 1, 1, 2, 4.0, 0, None),
                   ("a", "b", 2, 1, 3, 5.0, 2, 30.0)]


def test_rolling_reciprocity(loaded: Backend) -> None:
    sql = ("SELECT a, b, value_ab, value_ba, engagements_ab, engagements_ba, "
           "round(reciprocity, 6), round(balance, 6) FROM {db}.pair_reciprocity_%s ORDER BY a, b")
    assert rows(loaded, sql % "7d") == [
        ("a", "b", 5.0, 2.0, 3, 2, 0.4, round(3 / 7, 6)),
        ("b", "a", 2.0, 5.0, 2, 3, 0.4, round(-3 / 7, 6)),
        ("b", "c", 0.0, 4.0, 0, 2, 0.0, -1.0),
        ("c", "b", 4.0, 0.0, 2, 0, 0.0, 1.0),
    ]
    assert rows(loaded, sql % "30d")[:2] == [("a", "b", 5.0, 6.0, 3, 6, round(5 / 6, 6),
                                              round(-1 / 11, 6)),
                                             ("b", "a", 6.0, 5.0, 6, 3, round(5 / 6, 6),
                                              round(1 / 11, 6))]


def test_snubs_omissions_and_alerts_are_deduplicated(loaded: Backend) -> None:
    assert rows(loaded, "SELECT id, kind FROM {db}.snubs_latest ORDER BY id") == [
        ("e1", "like"), ("e2", "share"), ("e3", "like")]
    daily = rows(loaded, "SELECT toUInt32(day), src, dst, snubs FROM {db}.snubs_daily "
                         "ORDER BY day, src")
    day0 = int(TODAY.timestamp())
    assert daily == [(day0 - 86400, "c", "b", 1), (day0, "a", "b", 2)]
    assert rows(loaded, "SELECT toUInt32(day), left_out, by_org, omissions "
                        "FROM {db}.omissions_daily") == [(day0, "a", "b", 2)]
    assert rows(loaded, "SELECT post_id, entities FROM {db}.omissions_latest "
                        "ORDER BY post_id") == [("p1", ["x"]), ("p2", ["y"])]
    assert rows(loaded, "SELECT id, kind, org, other FROM {db}.alerts_latest") == [
        ("snub:e1:a:b:like", "snub", "a", "b")]


def test_org_rollups_follow_the_current_registry(loaded: Backend) -> None:
    got = rows(loaded, "SELECT toUInt32(window_start), org, direction, src, dst, community, "
                       "engagements, value FROM {db}.org_rollups_latest WHERE window = '1d' "
                       "ORDER BY window_start, org, direction, src, dst")
    day = int(TODAY.timestamp())
    # a rolls up to x (not to b: that was the old registry); c's side is external
    assert [r for r in got if r[0] == day] == [
        (day, "a", "given", "a", "b", "internal", 3, 5.0),
        (day, "b", "received", "a", "b", "internal", 3, 5.0),
        (day, "x", "given", "a", "b", "internal", 3, 5.0),
    ]
    assert [r for r in got if r[0] == day - 86400] == [
        (day - 86400, "b", "received", "c", "b", "external", 2, 4.0),
        (day - 86400, "c", "given", "c", "b", "internal", 2, 4.0),
    ]


def test_org_roi_and_time_to_reciprocate(loaded: Backend) -> None:
    day = int(TODAY.timestamp())
    assert rows(loaded, "SELECT toUInt32(day), org, community, engagements_given, "
                        "engagements_received, value_given, value_received FROM {db}.org_roi_daily "
                        "WHERE org IN ('a', 'x') ORDER BY day, org, community") == [
        (day - 40 * 86400, "a", "external", 7, 0, 7.0, 0.0),
        (day - 40 * 86400, "x", "external", 7, 0, 7.0, 0.0),
        (day - 10 * 86400, "a", "internal", 0, 4, 0.0, 4.0),
        (day - 10 * 86400, "x", "internal", 0, 4, 0.0, 4.0),
        (day - 3 * 86400, "a", "internal", 0, 2, 0.0, 2.0),
        (day - 3 * 86400, "x", "internal", 0, 2, 0.0, 2.0),
        (day, "a", "internal", 3, 0, 5.0, 0.0),
        (day, "x", "internal", 3, 0, 5.0, 0.0),
    ]
    assert rows(loaded, "SELECT src, dst, reciprocated, median_reciprocate_s "
                        "FROM {db}.time_to_reciprocate_daily ORDER BY day") == [
        ("b", "a", 1, 60.0), ("a", "b", 2, 30.0)]


def test_event_rate_and_lag(loaded: Backend) -> None:
    minute = int(TODAY.timestamp())
    assert rows(loaded, "SELECT toUInt32(minute), messages, events, late, duplicates, "
                        "dead_lettered FROM {db}.pipeline_event_rate") == [
        (minute, 25, 85, 1, 2, 1)]
    # partition 1 had no valid event: no lag sample
    assert rows(loaded, "SELECT partition, lag_s FROM {db}.pipeline_lag") == [(0, 5.0)]


def test_extras_skipped_before_an_upgrade_are_applied_after_it(
        store: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    if not server(store).extras:
        pytest.skip("needs a server with the extras (chdb) to play the upgraded one")
    with monkeypatch.context() as old_server:
        old_server.setattr(Server, "extras", property(lambda self: False))
        assert [m.status for m in migrate(store)] == ["applied", "applied", "skipped"]
    assert [m.status for m in migrate(store)] == ["present", "present", "applied"]
    assert [m.status for m in migrate(store)] == ["present"] * 3
    create = str(store.query(f"SHOW CREATE TABLE {store.database}.pipeline_batches")[0][0])
    assert "TTL" in create
