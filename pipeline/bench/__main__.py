"""``python -m pipeline.bench PHASE SPEC_FILE``: one measured phase in its own
process (the orchestrator, :func:`pipeline.bench.run.run_bench`, starts these).
Prints its result as the last ``@bench`` line (:mod:`pipeline.bench.phase`)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from pipeline.bench.phase import PhaseResult, PhaseSpec, emit


def _phases() -> dict[str, Callable[[PhaseSpec], PhaseResult]]:
    from pipeline.bench import pipeline_run, variants

    return {
        "ceiling": variants.run_ceiling,
        "baseline": variants.run_baseline,
        "peer": variants.run_peer,
        "pipeline_packed": pipeline_run.run_pipeline,
        "pipeline_single": pipeline_run.run_pipeline,
        "latency": pipeline_run.run_latency_worker,
        "live_producer": pipeline_run.run_live_producer,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pipeline.bench PHASE SPEC_FILE", file=sys.stderr)
        return 2
    phase, spec_file = argv
    logging.basicConfig(
        level=os.environ.get("RECIPROCITY_LOG_LEVEL", "WARNING").upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = _phases().get(phase)
    if run is None:
        print(f"unknown phase {phase!r}", file=sys.stderr)
        return 2
    result = run(PhaseSpec.load(Path(spec_file)))
    emit("result", **result.as_dict())
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except BaseException:  # reported on stderr; the orchestrator shows its last line
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is out: skip the interpreter's teardown, where leftover Faust,
    # Kafka client and sink threads of a failed run could hang the process.
    os._exit(code)
