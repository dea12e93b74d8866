"""``python -m pipeline.bench.stages``: the pure stages in memory on the bench's
data give exactly the reference's pair windows, packed or not. Never asserts a time."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.bench.data import Dataset, generate
from pipeline.bench.stages import STAGES, input_batches, main, run_stages

WINDOWS = {"1h": 3600, "1d": 86400}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(tmp_path_factory.mktemp("stages"), 3000, 60, 600, 10, WINDOWS)


@pytest.mark.parametrize("pack", [1, 100])
def test_stages_equal_the_reference(dataset: Dataset, pack: int) -> None:
    result = run_stages(dataset, pack=pack, partitions=3)
    assert result.exact and result.mismatches == 0
    assert result.engagements == dataset.engagements
    assert set(result.seconds) == set(STAGES)
    assert result.pair_row_versions >= dataset.reference_rows


def test_batches_cover_the_topic_in_partition_order(dataset: Dataset) -> None:
    batches = list(input_batches(dataset, 1, 3, batch_bytes=20_000))
    assert len(batches) > 1
    messages = [m for batch in batches for m in batch]
    assert len(messages) == dataset.events
    for partition in range(3):
        offsets = [m.offset for m in messages if m.partition == partition]
        assert offsets == list(range(len(offsets)))


def test_cli_prints_the_json_document(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--events", str(dataset.events), "--data", dataset.directory, "--pack", "50"])
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["exact"] is True and doc["events"] == dataset.events
    assert doc["eps"] > 0 and set(doc["seconds"]) == set(STAGES)


def test_cli_refuses_data_of_another_size(dataset: Dataset) -> None:
    with pytest.raises(SystemExit):
        main(["--events", "5", "--data", str(Path(dataset.directory))])
