"""``reciprocity bench``: the pipeline's throughput, latency and memory against
the Python ceiling, a naive Faust baseline and Quix Streams, on one generated
topic, each variant in its own process on a fresh embedded broker.

- :mod:`pipeline.bench.run`: the orchestrator (:class:`BenchConfig`, :func:`run_bench`);
- :mod:`pipeline.bench.data`: the generated topic, its registry and reference;
- :mod:`pipeline.bench.reference`: the bench's own engagement rules and counts;
- :mod:`pipeline.bench.variants`: ceiling, baseline, peer;
- :mod:`pipeline.bench.pipeline_run`: the pipeline end to end, and latency;
- :mod:`pipeline.bench.report`: JSON, table, ratios, plot;
- ``python -m pipeline.bench PHASE SPEC``: one phase process (:mod:`pipeline.bench.phase`).

What each figure covers: docs/benchmarks.md.
"""

from pipeline.bench.run import VARIANTS, BenchConfig, run_bench

__all__ = ["VARIANTS", "BenchConfig", "run_bench"]
