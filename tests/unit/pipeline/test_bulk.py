"""pipeline.bulk: changelog records byte for byte as Faust's own table writes."""

from __future__ import annotations

import faust
import pytest

from pipeline.bulk import BulkProducer

KEYS = ['["ctr1","fac2"]', "__tracker__0", '"org"', "\u00e9\u2603 \\ \"q\"", "", "a#3"]


@pytest.mark.parametrize("key_type", [str, None])
def test_table_keys_are_the_bytes_faust_writes(key_type: type | None) -> None:
    app = faust.App("bulk-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("states", partitions=4, key_type=key_type, value_type=bytes)
    bulk = BulkProducer(app)
    changelog = table.changelog_topic
    encode = bulk._key_encoder(changelog, table.key_serializer)
    for key in KEYS:
        assert encode(key) == changelog.prepare_key(key, table.key_serializer)[0]
    assert bulk._key_encoder(changelog, table.key_serializer) is encode  # once per table


def test_other_serializers_go_through_faust() -> None:
    app = faust.App("bulk-test-raw", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("raw-states", partitions=4, key_type=bytes, value_type=bytes)
    bulk = BulkProducer(app)
    encode = bulk._key_encoder(table.changelog_topic, "raw")
    assert encode(b"k") == b"k"
    assert encode("k") == b"k"
