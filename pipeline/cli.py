"""The ``reciprocity`` command line. The only place that reads the environment.

Exit codes: 0 success, 1 the pipeline failed while running, 2 bad usage or
configuration (the message says which file, entry or option).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydantic

from pipeline.aio import run_async
from pipeline.reciprocity import pair_reciprocity
from pipeline.settings import Settings, mask_url
from schemas.registry import RegistryError, load_registry

log = logging.getLogger("reciprocity")

#: where ``reciprocity demo`` serves the live page unless told otherwise
DEMO_PORT = 6066


class UsageError(Exception):
    """Bad options or configuration; printed without a traceback, exit code 2."""


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "broker", None):
        overrides["broker"] = args.broker
    if getattr(args, "topic", None):
        overrides["topic"] = args.topic
    if getattr(args, "registry", None):
        overrides["registry"] = args.registry
    store = getattr(args, "store", None)
    clickhouse = getattr(args, "clickhouse", None)
    if store and clickhouse:
        raise UsageError("give either --store DIR or --clickhouse URL, not both")
    if store:
        overrides["clickhouse_url"] = f"chdb://{Path(store).resolve()}"
    elif clickhouse:
        overrides["clickhouse_url"] = clickhouse
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid settings: {problems}") from None


def _print_summary(summary: Any, out: Any = sys.stdout) -> None:
    c = summary.counts
    rows = [
        ("events read", c.events),
        ("valid", c.valid),
        ("duplicates", c.duplicates),
        ("dead-lettered", c.dead_lettered),
        ("late", c.late),
        ("engagements", c.engagements),
        ("same-org", c.same_org),
        ("unmapped", c.unmapped),
        ("pair rows", summary.pair_rows),
        ("omissions", c.omissions),
        ("snubs", summary.snubs),
        ("drops", summary.drops),
        ("alerts", summary.alerts),
    ]
    for name, value in rows:
        out.write(f"{name:<14} {value:>10}\n")
    out.write(f"{'seconds':<14} {summary.seconds:>10.1f}\n")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import file_stream_id, run_file, run_worker
    from pipeline.sinks import open_backend

    if args.input is None and args.until_drained:
        raise UsageError("--until-drained needs --input FILE")
    if args.input is not None and not Path(args.input).is_file():
        raise UsageError(f"--input {args.input}: no such file")
    extra: dict[str, Any] = {}
    if args.input is not None and not args.broker:
        # A fresh embedded broker per run: the file is the stream. On a given
        # broker the topic is (its offsets and the app's tables outlive a file).
        extra["stream_id"] = file_stream_id(Path(args.input))
    settings = _settings(args, **extra)
    registry = load_registry(settings.registry)
    backend = open_backend(settings.clickhouse_url.get_secret_value())
    try:
        if args.input is not None:
            summary = run_async(
                run_file(settings, registry, backend, Path(args.input), args.until_drained,
                         external_broker=bool(args.broker))
            )
            _print_summary(summary)
            return 0
        log.warning("worker %s: %s -> %s", settings.app_id, settings.broker,
                    mask_url(settings.clickhouse_url.get_secret_value()))
        run_async(_run_forever(settings, registry, backend, run_worker))
        return 0
    finally:
        backend.close()


async def _run_forever(settings: Settings, registry: Any, backend: Any, run_worker: Any) -> None:
    import signal

    from pipeline.runner import ensure_pipeline_topics

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ensure_pipeline_topics(settings)
    await run_worker(settings, registry, backend, stop_event=stop)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.scenario != "random":
        return _demo_scenario(args)
    return _demo_random(args)


def _demo_scenario(args: argparse.Namespace) -> int:
    """A story-driven scenario, streamed live, then the focus org's report."""
    from pipeline import report
    from producers.scenarios import FOCUS, write_scenario

    workdir = Path(args.dir or tempfile.mkdtemp(prefix=f"reciprocity-{args.scenario}-"))
    events_path, registry_path = write_scenario(args.scenario, workdir, seed=args.seed)
    registry = load_registry(registry_path)
    focus = FOCUS[args.scenario]
    settings = _settings(args, registry=str(registry_path),
                         clickhouse_url=f"chdb://{(workdir / 'store').resolve()}",
                         stream_id=f"demo-{args.scenario}", **_demo_web(args))
    print(f"scenario {args.scenario}: {len(registry.orgs)} orgs, "
          f"{len(registry.org_of_account)} accounts; streaming {events_path} at "
          f"{args.rate:g} events/s through Kafka -> Faust -> ClickHouse (embedded)", flush=True)

    def read(backend: Any) -> tuple[Any, ...]:
        drops = [a for a in report.alert_rows(backend, org=focus)
                 if a["kind"] in ("drop_pair", "drop_inbound")]
        return (report.snub_rows(backend, src=focus),
                report.omission_rows(backend, left_out=focus),
                report.pair_totals(backend, "1d"), drops)

    def show(summary: Any, found: tuple[Any, ...]) -> None:
        _show_scenario(settings, registry, workdir, focus, summary, *found)

    _run_demo(args, settings, registry, events_path, read, show)
    return 0


def _show_scenario(settings: Settings, registry: Any, workdir: Path, focus: str,
                   summary: Any, snubs: Any, omitted: Any, totals: Any, drops: Any) -> None:
    print(f"\nfiles and store in {workdir}")
    _print_summary(summary)
    org = registry.orgs[focus]
    print(f"\n{org.name} ({focus}):")
    print(f"\n  its engagements nobody returned within "
          f"{settings.horizon / 3600:g} h (snubs), by who did not return them:")
    for name, count in _tally(row["dst"] for row in snubs):
        print(f"    {name:<10} {count:>5}")
    print(f"\n  posts featuring its people without naming {focus} (omissions), by poster:")
    for name, count in _tally(row["by"] for row in omitted):
        print(f"    {name:<10} {count:>5}")
    print("\n  reciprocity with each org it engages (value given / returned, "
          "r = min/max, 1 is even):")
    ranked = []
    for (src, dst), (_, given) in totals.items():
        if src == focus:
            back = totals.get((dst, focus), (0, 0.0))[1]
            ranked.append((pair_reciprocity(given, back), dst, given, back))
    for r, other, given, back in sorted(ranked, reverse=True):
        parent = " (parent)" if other == org.parent else ""
        print(f"    {other:<10} given {given:>7g}  returned {back:>7g}  r {r:.2f}{parent}")
    if drops:
        print("\n  engagement drops:")
        for alert in drops:
            print(f"    {alert['ts'][:10]}  {alert['message']}")
    print(f"\nreciprocity report snubs --store {workdir / 'store'} --src {focus}")


def _demo_web(args: argparse.Namespace) -> dict[str, Any]:
    """Settings that serve the live page on 127.0.0.1 at ``--port``: default
    6066, or a free port (said so) when 6066 is busy; 0 means any free port.
    A busy port given explicitly is a usage error."""
    from pipeline.broker import free_port

    port = args.port
    if port is None:
        port = DEMO_PORT
        if not _port_free(port):
            port = free_port()
            print(f"port {DEMO_PORT} is busy: the live page uses port {port}", flush=True)
    elif port == 0:
        port = free_port()
    elif not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port")
    elif not _port_free(port):
        raise UsageError(f"--port {port}: 127.0.0.1:{port} is in use (choose another "
                         "port, or --port 0 for any free one)")
    return {"web_enabled": True, "web_host": "127.0.0.1", "web_port": port}


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        # as the web server binds: a port left in TIME_WAIT is free, a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_demo(args: argparse.Namespace, settings: Settings, registry: Any, events_path: Path,
              read: Any, show: Any) -> None:
    """Stream ``events_path`` through a worker that serves the live page, then
    print the report: ``read(backend)`` (blocking) gets its data and
    ``show(summary, data)`` prints it. With ``--serve`` the report is printed
    once the input is drained and the worker and page stay up until Ctrl-C."""
    from pipeline.runner import run_file
    from pipeline.sinks import open_backend

    url = f"http://{settings.web_host}:{settings.web_port}/"
    progress = _progress_printer()
    drained = False

    def on_progress(stats: Any) -> None:
        if not drained:
            progress(stats)

    def on_ready(pipeline: Any) -> None:
        hint = ("  (RECIPROCITY_WEB_TOKEN is set: open it as "
                f"{url}#token=<the token>)" if settings.web_token.get_secret_value() else "")
        print(f"live page: {url}{hint}", flush=True)

    async def on_drained(pipeline: Any, summary: Any) -> None:
        nonlocal drained
        drained = True
        show(summary, await pipeline.sink.run(read, pipeline.sink.backend))
        print(f"\nserving the live page at {url} until Ctrl-C (the store is in use "
              "until then)", flush=True)

    hooks: dict[str, Any] = {"on_progress": on_progress, "on_ready": on_ready}
    if args.serve:
        hooks["on_drained"] = on_drained
    backend = open_backend(settings.clickhouse_url.get_secret_value())
    try:
        summary = run_async(run_file(settings, registry, backend, events_path,
                                       rate=args.rate, **hooks))
        found = None if args.serve else read(backend)
    finally:
        backend.close()
    if found is not None:
        show(summary, found)


def _tally(names: Any) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _progress_printer() -> Any:
    last_print = [0.0]

    def progress(stats: Any) -> None:
        now = time.monotonic()
        if now - last_print[0] >= 2 and stats.counts.events:
            last_print[0] = now
            c = stats.counts
            print(f"  live: {c.events:>7} events processed, {c.engagements:>7} engagements, "
                  f"{stats.pairs.snubs} snubs, {c.omissions} omissions, "
                  f"{c.dead_lettered} dead-lettered", flush=True)

    return progress


def _demo_random(args: argparse.Namespace) -> int:
    from pipeline.report import pair_rows
    from producers.simulator import build_institution, simulate_events
    from schemas.event import encode_event
    from schemas.registry import dump_registry

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="reciprocity-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    inst = build_institution(seed=args.seed, n_orgs=args.orgs)
    (workdir / "registry.yaml").write_text(dump_registry(inst.registry), encoding="utf-8")
    start = (time.time() // 86400 - 3) * 86400
    events_path = workdir / "events.jsonl"
    with open(events_path, "wb") as handle:
        for event in simulate_events(inst, args.events, start, days=3, seed=args.seed):
            handle.write(encode_event(event) + b"\n")
    settings = _settings(args, registry=str(workdir / "registry.yaml"),
                         clickhouse_url=f"chdb://{(workdir / 'store').resolve()}",
                         stream_id="demo", **_demo_web(args))
    print(f"demo institution: {len(inst.registry.orgs)} orgs, "
          f"{len(inst.registry.org_of_account)} accounts; streaming {args.events} events "
          f"at {args.rate:g}/s through Kafka -> Faust -> ClickHouse (embedded)", flush=True)
    _run_demo(args, settings, inst.registry, events_path,
              lambda backend: pair_rows(backend, "1d"),
              lambda summary, rows: _show_random(workdir, summary, rows))
    return 0


def _show_random(workdir: Path, summary: Any, rows: Any) -> None:
    print(f"\nfiles and store in {workdir}")
    _print_summary(summary)
    totals: dict[tuple[str, str], int] = {}
    for row in rows:
        pair = (row["src"], row["dst"])
        totals[pair] = totals.get(pair, 0) + row["engagements"]
    print("\nmost engaged pairs (given -> returned):")
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
    for (src, dst), given in ranked:
        back = totals.get((dst, src), 0)
        flag = "  <- never returned" if back == 0 else ""
        print(f"  {src:>8} -> {dst:<8} {given:>5}   returned {back:>5}{flag}")
    store = workdir / "store"
    print(f"\nmore: reciprocity report pairs|snubs|omissions|alerts|orgs --store {store}")
    print("a story: reciprocity demo --scenario seed")


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline import report
    from pipeline.sinks import open_backend
    from pipeline.windows import parse_window

    window: str = getattr(args, "window", "1d")
    try:
        parse_window(window)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.store and not args.clickhouse:
        raise UsageError("report needs --store DIR or --clickhouse URL")
    if args.store and not Path(args.store).is_dir():
        raise UsageError(f"--store {args.store}: no such directory")
    settings = _settings(args)
    url = settings.clickhouse_url.get_secret_value()
    backend = open_backend(url)
    table, fields, read = {
        "pairs": ("pair_windows", report.PAIR_FIELDS,
                  lambda b: report.pair_rows(b, window)),
        "snubs": ("snubs", report.SNUB_FIELDS,
                  lambda b: report.snub_rows(b, args.src, args.dst)),
        "omissions": ("omissions", report.OMISSION_FIELDS,
                      lambda b: report.omission_rows(b, args.left_out, args.by)),
        "alerts": ("alerts", report.ALERT_FIELDS,
                   lambda b: report.alert_rows(b, args.kind, args.org)),
        "orgs": ("org_rollups_latest", report.ORG_FIELDS,
                 lambda b: report.org_rows(b, window, args.org)),
    }[args.report]
    try:
        if not backend.has_table(table):
            raise UsageError(f"{mask_url(url)} holds no reciprocity results "
                             f"(no {backend.database}.{table} table): run the pipeline first")
        rows = read(backend)
    finally:
        backend.close()
    report.write_rows(rows, fields, args.format, sys.stdout)
    return 0


def _output(settings: Settings) -> Any:
    from pipeline.broker import ensure_topics
    from producers.output import KafkaOutput

    options = settings.kafka_client_options()
    ensure_topics(settings.bootstrap_servers, [settings.topic, settings.source_dlq_topic],
                  settings.partitions, **options)
    return KafkaOutput(settings.bootstrap_servers, settings.topic, settings.source_dlq_topic,
                       **options)


def _print_produced(summary: Any) -> None:
    c = summary.counts
    rows = [("source", summary.source), ("produced", c.produced),
            ("delivered", summary.delivered), ("failed", summary.failed),
            ("skipped", c.skipped), ("dead-lettered", c.dead_lettered)]
    rows += [(f"  {reason}", n) for reason, n in sorted(c.reasons.items())]
    for name, value in rows:
        print(f"{name:<14} {value:>10}")
    print(f"{'seconds':<14} {summary.seconds:>10.1f}")


def _thanks_rule(settings: Settings) -> Any:
    from producers.thanks import DEFAULT_THANKS_WORDS, ThanksRule

    return ThanksRule(settings.thanks_words or DEFAULT_THANKS_WORDS)


def _produce_mastodon(args: argparse.Namespace, settings: Settings) -> Any:
    from producers import mastodon
    from producers.run import run_async_source

    registry = load_registry(settings.registry)
    accounts = mastodon.load_accounts(args.tokens, registry=registry)
    if not accounts:
        raise UsageError("no Mastodon accounts configured (--tokens FILE or "
                         "RECIPROCITY_MASTODON_TOKENS)")
    output = _output(settings)
    streamer = mastodon.MastodonStreamer(
        accounts, mastodon.mapper_factory(registry, accounts, _thanks_rule(settings)), output)
    return run_async(run_async_source(output, "mastodon", streamer.run,
                                        settings.stats_interval_s))


def _produce_bluesky(args: argparse.Namespace, settings: Settings) -> Any:
    from producers import bluesky
    from producers.run import run_async_source

    registry = load_registry(settings.registry)
    dids = bluesky.wanted_dids(registry)
    if not dids:
        raise UsageError(f"{settings.registry} lists no Bluesky DIDs among account identities")
    output = _output(settings)
    client = bluesky.JetstreamClient(
        args.url, bluesky.JetstreamMapper(registry, _thanks_rule(settings)), output,
        Path(args.cursor_file), wanted_dids=dids)
    return run_async(run_async_source(output, "bluesky", client.run,
                                        settings.stats_interval_s))


def _simulation_config(args: argparse.Namespace, **extra: Any) -> Any:
    from producers.simulator import SimulationConfig

    options: dict[str, Any] = {"seed": args.seed, "n_orgs": args.orgs,
                               "accounts_per_org": args.accounts_per_org, "days": args.days,
                               **extra}
    if args.events is not None:
        options["n_events"] = args.events
    if args.rate is not None:
        options["rate"] = args.rate
    try:
        return SimulationConfig(**options)
    except ValueError as exc:
        raise UsageError(f"invalid simulation: {exc}") from None


def _produce_simulate(args: argparse.Namespace, settings: Settings) -> Any:
    """A simulated institution live: event times from now, sent in real time
    (or as fast as possible with --fast); its registry written for the pipeline."""
    from producers import run
    from producers.simulator import simulate
    from schemas.event import parse_ts
    from schemas.registry import dump_registry

    try:
        start = parse_ts(args.start) if args.start else float(int(time.time()))
    except ValueError as exc:
        raise UsageError(f"--start: {exc}") from None
    config = _simulation_config(args, start_ts=start)
    registry, events = simulate(config)
    Path(args.registry_out).write_text(dump_registry(registry), encoding="utf-8")
    print(f"registry of the simulated institution: {args.registry_out} "
          f"({len(registry.orgs)} orgs, {len(registry.org_of_account)} accounts)", flush=True)
    total = None if config.rate is not None else config.n_events
    return run.run_lines(_output(settings), "simulate", run.simulated_lines(events),
                         None if args.fast else 1.0, total)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``reciprocity simulate --out DIR``: a file and its registry."""
    from producers.simulator import write_simulation

    start = time.monotonic()
    events_path, registry_path = write_simulation(_simulation_config(args), Path(args.out))
    print(f"{events_path}\n{registry_path}\n({time.monotonic() - start:.1f} s)")
    return 0


def _simulation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orgs", type=int, default=60, help="orgs, partners included (60)")
    parser.add_argument("--accounts-per-org", dest="accounts_per_org", type=int, default=3,
                        help="accounts per org (3)")
    parser.add_argument("--events", type=int, default=None,
                        help="number of events (default 100000; ignored with --rate)")
    parser.add_argument("--rate", type=float, default=None,
                        help="target events per second of event time (overrides --events)")
    parser.add_argument("--days", type=float, default=7.0, help="days of event time (7)")
    parser.add_argument("--seed", type=int, default=7, help="seed (7): same seed, same output")


def cmd_db(args: argparse.Namespace) -> int:
    """``reciprocity db migrate``: apply the schema migrations the store lacks."""
    from pipeline.sinks import open_backend
    from pipeline.sinks.migrations import migrate

    settings = _settings(args)
    if args.cluster is not None:
        settings = settings.model_copy(update={"clickhouse_cluster": args.cluster})
    cluster = settings.clickhouse_cluster or None
    if cluster is not None and not cluster.isidentifier():
        raise UsageError(f"--cluster {cluster!r}: must be a plain identifier")
    backend = open_backend(settings.clickhouse_url.get_secret_value())
    try:
        applied = migrate(backend, cluster)
    finally:
        backend.close()
    where = f"{backend.database}" + (f" on cluster {cluster}" if cluster else "")
    for migration in applied:
        print(f"{migration.number:03d}_{migration.name:<10} {migration.status}")
    changed = sum(m.status != "present" for m in applied)
    print(f"schema of {where}: {len(applied)} migrations, {changed} new")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``reciprocity config show``: the effective settings, secrets masked."""
    import orjson

    settings = _settings(args)
    values = settings.masked()
    if args.format == "json":
        print(orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode())
        return 0
    for name in type(settings).model_fields:
        value = values[name]
        if isinstance(value, (list, tuple)):
            value = ",".join("=".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                             for v in value)
        print(f"RECIPROCITY_{name.upper():<32} {value}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from producers import run

    settings = _settings(args)
    if args.source == "replay":
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"{args.file}: no such file")
        if args.speed is not None and args.speed <= 0:
            raise UsageError("--speed must be positive")
        summary = run.replay_file(_output(settings), path, args.format, args.speed)
    elif args.source == "mastodon":
        summary = _produce_mastodon(args, settings)
    elif args.source == "bluesky":
        summary = _produce_bluesky(args, settings)
    elif args.source == "simulate":
        summary = _produce_simulate(args, settings)
    else:  # pragma: no cover - argparse restricts the choices
        raise UsageError(f"unknown source {args.source}")
    _print_produced(summary)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``reciprocity bench``: every variant on one generated topic (docs/benchmarks.md).
    Exit code 1 when the pipeline's results differ from the reference or a
    variant failed; never because of a time."""
    import orjson

    from pipeline.bench import VARIANTS, BenchConfig, run_bench
    from pipeline.bench.report import table
    from pipeline.windows import window_label

    settings = _settings(args)  # the pipeline variants use the environment's settings
    only = tuple(v.strip() for v in args.only.split(",") if v.strip()) if args.only else VARIANTS
    config = BenchConfig(
        events=args.events, orgs=args.orgs, accounts=args.accounts, days=args.days,
        partitions=args.partitions, pack=args.pack, rate=args.rate,
        latency_seconds=args.latency_seconds, variant_timeout_s=args.variant_timeout,
        windows=tuple((window_label(size), size) for size in settings.windows), only=only,
        out=args.out,
    )
    doc = run_bench(config)
    if args.format == "table":
        print(table(doc))
    print(orjson.dumps(doc).decode(), flush=True)
    failed = any(str(v.get("note", "")).startswith("FAILED") for v in doc["variants"].values())
    return 1 if failed or doc["exact"] is False else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reciprocity",
        description="Live reciprocity analytics for institutions' social accounts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (embedded with --input, else a worker)")
    run.add_argument("--registry", help="organization registry YAML [RECIPROCITY_REGISTRY]")
    run.add_argument("--input", help="contract-v1 JSONL file to produce and process")
    run.add_argument("--until-drained", action="store_true",
                     help="stop once every event of --input is processed and stored")
    run.add_argument("--store", help="embedded store directory (chdb)")
    run.add_argument("--clickhouse", help="ClickHouse URL [RECIPROCITY_CLICKHOUSE_URL]")
    run.add_argument("--broker", help="Kafka URL kafka://host:port [RECIPROCITY_BROKER]; "
                     "with --input, use this broker instead of an embedded one")
    run.add_argument("--topic", help="input topic [RECIPROCITY_TOPIC]")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run a small simulated institution and show what it found")
    demo.add_argument("--events", type=int, default=5000, help="events to simulate (5000)")
    demo.add_argument("--orgs", type=int, default=12, help="orgs in the institution (12)")
    demo.add_argument("--seed", type=int, default=7, help="simulation seed (7)")
    demo.add_argument("--rate", type=float, default=1000.0,
                      help="events per second offered to Kafka (1000)")
    demo.add_argument("--scenario", choices=("random", "seed"), default="random",
                      help="random: a simulated institution (default); seed: a faculty "
                      "that its parent snubs and leaves out, while partners reciprocate")
    demo.add_argument("--dir", help="directory for the generated files and the store "
                      "(default: a new temp dir)")
    demo.add_argument("--port", type=int, default=None,
                      help=f"port of the live page on 127.0.0.1 (default {DEMO_PORT}, or a "
                      f"free one if {DEMO_PORT} is busy; 0: any free port)")
    demo.add_argument("--serve", action="store_true",
                      help="after the report, keep the worker and the live page up until "
                      "Ctrl-C")
    demo.set_defaults(func=cmd_demo)

    produce = sub.add_parser("produce", help="stream a source's events into Kafka")
    psub = produce.add_subparsers(dest="source", required=True)

    def produce_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        source = psub.add_parser(name, help=help_text)
        source.add_argument("--broker", help="Kafka URL kafka://host:port [RECIPROCITY_BROKER]")
        source.add_argument("--topic", help="topic to write [RECIPROCITY_TOPIC]")
        source.add_argument("--registry", help="organization registry YAML "
                            "[RECIPROCITY_REGISTRY]")
        source.set_defaults(func=cmd_produce)
        return source

    replay = produce_parser("replay", "a JSONL (contract v1) or CSV file, fast or paced")
    replay.add_argument("file", help="the file to replay")
    replay.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    replay.add_argument("--speed", type=float, default=None,
                        help="keep the events' original pacing divided by SPEED "
                        "(1 = real time; default: as fast as possible)")

    simulate_live = produce_parser("simulate", "a simulated institution, live from now "
                                   "(real time, or --fast)")
    _simulation_options(simulate_live)
    simulate_live.add_argument("--start", help="event time of the start, RFC 3339 or epoch "
                               "seconds (default: now)")
    simulate_live.add_argument("--fast", action="store_true",
                               help="send as fast as possible instead of in real time")
    simulate_live.add_argument("--registry-out", dest="registry_out",
                               default="simulated-registry.yaml",
                               help="where to write the institution's registry for the "
                               "pipeline (simulated-registry.yaml)")
    bsky = produce_parser("bluesky", "Bluesky Jetstream: follows, likes, reposts, posts, "
                          "replies, quotes and mentions of the registry's DIDs")
    bsky.add_argument("--url", default="wss://jetstream2.us-east.bsky.network/subscribe",
                      help="Jetstream subscribe URL (default: a public Bluesky instance)")
    bsky.add_argument("--cursor-file", dest="cursor_file", default="bluesky.cursor",
                      help="where the resume cursor is kept (default bluesky.cursor)")
    masto = produce_parser("mastodon", "Mastodon streaming: notifications and own posts of "
                           "the registry's accounts")
    masto.add_argument("--tokens", help="YAML/JSON: registry account id -> {instance, token "
                       "or token_env} (default: RECIPROCITY_MASTODON_TOKENS)")

    db = sub.add_parser("db", help="the store's schema")
    dsub = db.add_subparsers(dest="db", required=True)
    db_migrate = dsub.add_parser(
        "migrate", help="apply the schema migrations the store lacks (idempotent; "
        "workers also do it on start)")
    group = db_migrate.add_mutually_exclusive_group()
    group.add_argument("--store", help="embedded store directory")
    group.add_argument("--clickhouse", help="ClickHouse URL")
    db_migrate.add_argument("--cluster", help="ClickHouse cluster name: replicated + "
                            "Distributed tables, DDL ON CLUSTER (default: "
                            "RECIPROCITY_CLICKHOUSE_CLUSTER)")
    db_migrate.set_defaults(func=cmd_db)

    config = sub.add_parser("config", help="the effective settings")
    csub = config.add_subparsers(dest="config", required=True)
    show = csub.add_parser("show", help="print every setting (environment and defaults), "
                           "secrets masked")
    show.add_argument("--format", choices=("table", "json"), default="table")
    show.set_defaults(func=cmd_config)

    simulate_file = sub.add_parser("simulate", help="write a simulated institution's events "
                                   "(JSONL) and registry to a directory")
    simulate_file.add_argument("--out", required=True, help="directory to write to")
    _simulation_options(simulate_file)
    simulate_file.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="throughput, latency and memory of the pipeline "
                           "against the Python ceiling, a Faust baseline and Quix Streams")
    bench.add_argument("--events", type=int, default=1_000_000,
                       help="events in the generated topic (1000000)")
    bench.add_argument("--orgs", type=int, default=1000, help="orgs (1000)")
    bench.add_argument("--accounts", type=int, default=10_000,
                       help="accounts, spread evenly over the orgs (10000)")
    bench.add_argument("--days", type=float, default=30.0, help="days of event time (30)")
    bench.add_argument("--partitions", type=int, default=4, help="topic partitions (4)")
    bench.add_argument("--pack", type=int, default=500,
                       help="events per message of the packed topic (500)")
    bench.add_argument("--rate", type=float, default=10_000.0,
                       help="offered events/s of the latency phase (10000)")
    bench.add_argument("--latency-seconds", dest="latency_seconds", type=float, default=60.0,
                       help="duration of the latency phase (60)")
    bench.add_argument("--variant-timeout", dest="variant_timeout", type=float, default=60.0,
                       help="time box of the baseline and the peer, seconds from their "
                       "first event; their rate covers what they processed (60)")
    bench.add_argument("--only", help="comma-separated variants to run (default all): "
                       "ceiling,baseline,peer,pipeline_packed,pipeline_single,latency")
    bench.add_argument("--format", choices=("table", "json"), default="table",
                       help="table (then the JSON line) or only the JSON line")
    bench.add_argument("--out", help="directory for bench.json, bench.png and the logs")
    bench.set_defaults(func=cmd_bench)

    report = sub.add_parser("report", help="print results from the store")
    rsub = report.add_subparsers(dest="report", required=True)

    def report_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sub_report = rsub.add_parser(name, help=help_text)
        group = sub_report.add_mutually_exclusive_group()
        group.add_argument("--store", help="embedded store directory")
        group.add_argument("--clickhouse", help="ClickHouse URL")
        sub_report.add_argument("--format", choices=("table", "jsonl"), default="table")
        sub_report.set_defaults(func=cmd_report)
        return sub_report

    pairs = report_parser("pairs", "one row per directed pair window")
    pairs.add_argument("--window", default="1h", help="window size: 1h or 1d (default 1h)")
    snubs = report_parser("snubs", "engagements not returned within the horizon")
    snubs.add_argument("--src", help="only snubs of engagements given by this org")
    snubs.add_argument("--dst", help="only snubs by this org (it did not return)")
    omissions = report_parser("omissions", "posts featuring an org's people without naming it")
    omissions.add_argument("--left-out", dest="left_out", help="only this left-out org")
    omissions.add_argument("--by", help="only posts by this org")
    alerts = report_parser("alerts", "snub, omission and drop alerts")
    alerts.add_argument("--kind", choices=("snub", "omission", "drop_pair", "drop_inbound"))
    alerts.add_argument("--org", help="only alerts concerning this org")
    orgs = report_parser("orgs", "each org's figures with its descendants, by community")
    orgs.add_argument("--window", default="1d", help="window size the sums use (default 1d)")
    orgs.add_argument("--org", help="only this org")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RECIPROCITY_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # the driver logs a traceback per failed connection attempt; our error says it once
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, RegistryError, ValueError) as exc:  # incl. MastodonConfigError
        print(f"reciprocity: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from pipeline.broker import BrokerError
        from pipeline.runner import PipelineFailed
        from pipeline.sinks import StoreError
        from pipeline.sinks.migrations import MigrationError
        from producers.kafka_writer import DeliveryError

        if isinstance(exc, PipelineFailed | BrokerError | DeliveryError | StoreError
                      | MigrationError):
            print(f"reciprocity: {exc}", file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
