"""The ``gpufit`` command: probe | fit | table | calibrate | upgrade | baseline | plan | ab |
bisect."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_gpufit.engines.knobs import add_cli_options as add_engine_options
from pytest_gpufit.engines.knobs import cli_options, knobs_from_options
from pytest_gpufit.engines.registry import engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.commands import add_commands
from pytest_gpufit.fit.names import variant_note
from pytest_gpufit.hardware.probe import build_inventory
from pytest_gpufit.hardware.records import Inventory
from pytest_gpufit.ini_files import pytest_settings
from pytest_gpufit.metrics import format_value
from pytest_gpufit.numbers import parse_whole
from pytest_gpufit.settings import OPTIONS
from pytest_gpufit.units import format_gb, parse_percent

_SIMULATE = next(o for o in OPTIONS if o.name == "simulate")


def _probe(args: argparse.Namespace) -> int:
    simulate = None
    if args.simulate is not None:  # set but empty is an error, as for --gpufit-simulate
        simulate = _SIMULATE.read(args.simulate, "--simulate")
    inventory = build_inventory(simulate)
    if args.json:
        print(json.dumps(inventory.to_dict(), indent=2))
        return 0
    print(probe_text(inventory))
    return 0


def probe_text(inventory: Inventory) -> str:
    if not inventory.gpus:
        return f"no GPU: {inventory.reason or 'none found'}"
    env = inventory.environment
    lines = [
        f"source: {inventory.source}; driver {env.driver_version or '-'}, "
        f"CUDA {env.cuda_driver_version or '-'}, torch {env.torch_version or '-'}"
    ]
    for g in inventory.gpus:
        bw = f", {g.memory_bandwidth_bytes_s / 1e9:.0f} GB/s" if g.memory_bandwidth_bytes_s else ""
        lines.append(f"{g.describe()}{bw}; native: {', '.join(g.native_dtypes) or '-'}")
    lines += [f"link {link.describe()}" for link in inventory.links]
    lines += [f"warning: {w}" for w in inventory.warnings]
    return "\n".join(lines)


def _setups(gpu_arg: str | None, option: str = "--gpu") -> list[Any]:
    # late: the fit tables load only for `gpufit fit` and `gpufit table` (~30 ms)
    from pytest_gpufit.fit.table import all_catalog_setups, local_setups, parse_setups

    if gpu_arg and gpu_arg != "local":
        return parse_setups(gpu_arg, option)
    inventory = build_inventory()
    if inventory.gpus:
        return local_setups(inventory.gpus)
    if gpu_arg == "local":
        raise GpufitError(f"{option} local: no GPU: {inventory.reason or 'none found'}")
    return all_catalog_setups()


def _fit(args: argparse.Namespace) -> int:
    # late: only `gpufit fit` loads the planner and the fit tables (~75 ms)
    from pytest_gpufit.engines.planning import plan_setups, plan_text
    from pytest_gpufit.fit.context import parse_rope_scaling
    from pytest_gpufit.fit.table import build_rows, render

    options = {o: getattr(args, o.lstrip("-").replace("-", "_")) for o in cli_options()}
    knobs = knobs_from_options(args.engine, options)
    if knobs is not None and knobs.max_model_len is None and args.context is not None:
        # --context is the engine's context too, as requires_fit(context=) is: the plan and the
        # table above it answer the same question (llama.cpp's -c is shared by its -np slots).
        asked = engine(knobs.engine).knobs_for(args.context, knobs.max_num_seqs or 1, None)
        knobs = dataclasses.replace(knobs, max_model_len=asked["max_model_len"])
    setups = _setups(args.gpu)
    rope = None if args.rope_scaling is None else parse_rope_scaling(args.rope_scaling)
    (row,) = build_rows(
        [args.model], setups, [args.dtype], args.context, args.batch, args.kv_dtype, rope=rope
    )
    est = row.estimate
    plans = plan_setups(row.spec, args.dtype, setups, knobs) if knobs else []
    if args.json:
        gpus = [f.to_dict() for f in row.fits]
        for entry, engine_plan in zip(gpus, plans, strict=False):
            entry["engine"] = engine_plan.to_dict()
        data = {"model": row.spec.name, "path": row.spec.path, **est.to_dict(), "gpus": gpus}
        print(json.dumps(data, indent=2))
        return 0

    p = row.spec.params
    variant = variant_note(args.model)
    if variant:
        print(f"note: {variant}")
    print(
        f"{row.spec.name} ({row.spec.model_type}): {p.total / 1e9:.2f}B parameters, "
        f"{p.active / 1e9:.2f}B active per token"
    )
    print(
        f"{est.dtype} weights {format_gb(est.weights_bytes)} (from {est.weights_source}), "
        f"KV cache {format_gb(est.kv_cache_bytes)} ({est.kv_bytes_per_token} B/token, "
        f"{est.kv_dtype}, context {est.context}, batch {est.batch}), activations "
        f"{format_gb(est.activation_bytes)}, runtime {format_gb(est.overhead_bytes)}"
    )
    print(f"total {format_gb(est.total_bytes)} per instance")
    for warning in est.warnings:
        print(f"note: {warning}")
    print(render([row], setups))
    if knobs is not None and plans and knobs.max_model_len is None:
        # The table above is at est.context; the engine, like vLLM by default, plans at the
        # model's maximum: say so, or the two figures read as a contradiction.
        print(
            f"note: the {knobs.engine} plan runs at {plans[0].max_model_len:,} tokens per "
            f"request (the model's maximum, the engine's default), not the table's "
            f"{est.context:,}; --context or --max-model-len sets it"
        )
    for setup, engine_plan in zip(setups, plans, strict=False):  # no plans without --engine
        print("\n".join(plan_text(setup.id, setup.gpu, engine_plan)))
    return 0


def _table(args: argparse.Namespace) -> int:
    from pytest_gpufit.fit.table import build_rows, default_models, render  # late: see _setups

    setups = _setups(args.gpus, "--gpus")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes:
        raise GpufitError(f"--dtypes: no dtype given in {args.dtypes!r}; e.g. --dtypes bf16,fp8")
    rows = build_rows(
        args.models or default_models(),
        setups,
        dtypes,
        args.context,
        strict_context=bool(args.models),
    )
    print(render(rows, setups, args.format))
    return 0


def _store(args: argparse.Namespace) -> Any:
    """The baseline folder the plugin would use here: --dir (relative to the current folder),
    else the settings a pytest session started here would have (GPUFIT_BASELINE_DIR, the ini
    key gpufit_baseline_dir, or the default), relative to that session's rootdir."""
    from pytest_gpufit.baseline import Store  # late: only `gpufit baseline` (~25-55 ms)

    if args.dir is not None:
        return Store(Path.cwd() / args.dir)
    found = pytest_settings()
    return Store(found.rootdir / found.settings.baseline_dir)


def _baseline_list(args: argparse.Namespace) -> int:
    from pytest_gpufit.ab.output import record_text

    store = _store(args)
    runs = store.runs()
    pairs = store.ab_records()
    if not runs and not pairs:
        print(f"no baseline runs in {store.root}")
        return 0
    print(f"baselines in {store.root}:")
    for run in runs:
        mark = "  (accepted)" if run.accepted else ""
        print(f"{run.gpu:28s} {run.suite:20s} {run.run_id}{mark}")
    for record in pairs:
        print(record_text(record))
    return 0


def _metrics_text(metrics: Any, where: str) -> str:
    from pytest_gpufit.baseline import metric_values  # late: see _store

    values = metric_values(metrics, where)
    return ", ".join(f"{k} {format_value(k, v)}" for k, v in values.items()) or "(no metrics)"


def _baseline_show(args: argparse.Namespace) -> int:
    store = _store(args)
    path = store.find(args.run)
    record = store.read(path)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(f"run {record['id']} of suite {record['suite']} ({path})")
    for key, value in record["fingerprint"].items():
        print(f"  {key}: {value}")
    for nodeid, entry in sorted(record["results"].items()):
        shown = _metrics_text(entry.get("metrics", {}), f"{path}: {nodeid}")
        print(f"{nodeid} [{entry['outcome']}]: {shown}")
    return 0


def _baseline_accept(args: argparse.Namespace) -> int:
    store = _store(args)
    files = store.accept(args.run, force=args.force)
    record = store.read(files[0])
    print(
        f"accepted {record['id']} for {record['fingerprint']['gpu_name']}, suite {record['suite']}"
    )
    # The baseline folder is reviewed like code: say what to commit.
    print("files to commit:")
    for path in files:
        print(f"  {path}")
    return 0


def _baseline_diff(args: argparse.Namespace) -> int:
    # late: see _store
    from pytest_gpufit.baseline import compare, environment_changes, metric_values
    from pytest_gpufit.baseline.setup import setup_changes

    store = _store(args)
    paths = [store.find(r) for r in (args.old, args.new)]
    old, new = (store.read(p) for p in paths)
    changes = environment_changes(old["fingerprint"], new["fingerprint"])
    print("environment: " + (", ".join(changes) or "no change"))
    if changes:
        from pytest_gpufit.ab.output import tested_lines

        for line in tested_lines(store.ab_records(), old["fingerprint"], new["fingerprint"]):
            print(line)
    rows = [["check", "metric", args.old, args.new, "change", "verdict"]]
    outcomes = []
    for nodeid in sorted(set(old["results"]) & set(new["results"])):
        before, after = old["results"][nodeid], new["results"][nodeid]
        if before["outcome"] != after["outcome"]:
            outcomes.append(f"outcome {before['outcome']} -> {after['outcome']}: {nodeid}")
        if "setup" in after:
            # Figures measured with other parameters or another target are not compared.
            moved = setup_changes(before.get("setup"), after["setup"])
            if moved:
                outcomes.append(f"not comparable ({', '.join(moved)}): {nodeid}")
                continue
            if moved is None:
                outcomes.append(f"note: {args.old} kept no check parameters: {nodeid}")
        for c in compare(
            before.get("metrics", {}),
            after.get("metrics", {}),
            {},
            args.tolerance,
            f"{paths[0]}: {nodeid}",
        ):
            rows.append(
                [
                    nodeid,
                    c.metric,
                    format_value(c.metric, c.old),
                    format_value(c.metric, c.new),
                    f"{c.change:+.1%}",
                    c.verdict,
                ]
            )
        # A metric OLD measured and NEW did not would otherwise vanish from the table.
        lost = set(metric_values(before.get("metrics", {}), f"{paths[0]}: {nodeid}"))
        lost -= set(metric_values(after.get("metrics", {}), f"{paths[1]}: {nodeid}"))
        for metric in sorted(lost):
            old_value = metric_values(before.get("metrics", {}))[metric]
            rows.append([nodeid, metric, format_value(metric, old_value), "-", "", "missing"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for line in outcomes:
        print(line)
    only = sorted(set(old["results"]) ^ set(new["results"]))
    for nodeid in only:
        print(f"only in {'old' if nodeid in old['results'] else 'new'}: {nodeid}")
    worse = any(row[-1] in ("worse", "missing") for row in rows[1:])
    stopped = any(line.startswith(("outcome passed ->", "not comparable")) for line in outcomes)
    gone = any(nodeid in old["results"] for nodeid in only)
    return 1 if args.exit_code and (worse or stopped or gone) else 0


def _baseline_fleet(args: argparse.Namespace) -> int:
    """Per host, how far each metric sits from the fleet median of its GPU model and suite."""
    # late: see _store
    from pytest_gpufit.baseline import slug
    from pytest_gpufit.baseline.fleet import host_history, latest_per_host, view_lines

    store = _store(args)
    groups: dict[tuple[str, str], list[Any]] = {}
    for info in store.runs():
        groups.setdefault((info.gpu, info.suite), []).append(info)
    chosen = {
        key: infos
        for key, infos in groups.items()
        if (args.gpu is None or key[0] == slug(args.gpu))
        and (args.suite is None or key[1] == slug(args.suite))
    }
    if not chosen:
        have = ", ".join(sorted({f"{g}/{s}" for g, s in groups})) or "no runs at all"
        wanted = " and ".join(
            f"{what} {value!r}"
            for what, value in (("GPU", args.gpu), ("suite", args.suite))
            if value is not None
        )
        hint = (
            "see gpufit baseline list"
            if groups
            else "runs are recorded by pytest --gpufit-baseline=save or compare on each host; "
            "give --dir (or GPUFIT_BASELINE_DIR) where the store is elsewhere"
        )
        raise GpufitError(
            f"no baseline runs{' of ' + wanted if wanted else ''} in {store.root} "
            f"(it has: {have}); {hint}"
        )
    blocks = []
    for infos in chosen.values():
        records = [(str(i.path), store.read(i.path)) for i in infos]
        runs, unnamed = latest_per_host(records)
        gpu_name = str(records[-1][1]["fingerprint"]["gpu_name"])
        history = host_history(records)
        suite = records[-1][1]["suite"]
        blocks.append(
            "\n".join(view_lines(gpu_name, suite, runs, unnamed, args.tolerance, history))
        )
    print("\n\n".join(blocks))
    return 0


def _baseline_plot(args: argparse.Namespace) -> int:
    from pytest_gpufit.plot import plot_runs  # late: matplotlib, the plot extra

    store = _store(args)
    runs = store.runs()
    records = [(store.read(run.path), run.accepted) for run in runs]
    written = plot_runs(records, Path(args.output).absolute())
    print(f"wrote {written}")
    return 0


def _baseline_migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.legacy():
        print(f"nothing to migrate in {store.root}")
        return 0
    for line in store.migrate():
        print(line)
    print(f"migrated {store.root} to one accepted run per GPU model and suite; commit it")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Collect, place every item on the pool's classes, print the table or the matrix."""
    # late: only `gpufit plan` loads the fleet (~20 ms)
    from pytest_gpufit.fleet.collect import collect
    from pytest_gpufit.fleet.plan import (
        idle_lines,
        make_plan,
        matrix_json,
        orphan_lines,
        table_lines,
    )
    from pytest_gpufit.fleet.pool import load_pool

    if not args.runners.strip():
        raise GpufitError(
            "--runners is set but empty; give the runner-pool file, e.g. "
            "--runners gpufit-runners.yaml"
        )
    pool = load_pool(Path(args.runners), "--runners")
    pytest_args = list(args.pytest_args)
    if "--" in pytest_args:  # gpufit's separator, wherever it stands (`suites/ -- -k x` too)
        pytest_args.remove("--")
    plan = make_plan(pool, collect(pytest_args))
    orphans = orphan_lines(plan)
    if args.format == "github-matrix":
        if orphans:
            print("\n".join(orphans), file=sys.stderr)
            return 1
        print("\n".join(idle_lines(plan)), file=sys.stderr)
        print(matrix_json(plan))
        return 0
    print("\n".join(table_lines(plan) + idle_lines(plan)))
    if orphans:
        print("\n".join(orphans))
        return 1
    return 0


def _ab(args: argparse.Namespace) -> int:
    """Thin: the sides, the runs and their judgement are ``pytest_gpufit.ab``'s."""
    from pytest_gpufit.ab.child import terminate_as_interrupt
    from pytest_gpufit.ab.command import run_command
    from pytest_gpufit.plot import plot_ab

    with terminate_as_interrupt():
        return run_command(args, plot_ab, _store if args.record else None)


def _percent(text: str) -> float:
    try:
        return parse_percent(text, "--tolerance")
    except GpufitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    try:
        return parse_whole(text, text=True)
    except GpufitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _bisect(args: argparse.Namespace) -> int:
    from pytest_gpufit.ab.bisect_run import Sides, run_bisect
    from pytest_gpufit.ab.child import terminate_as_interrupt

    sides = Sides(args.a_requirements, args.a_python, args.b_requirements, tuple(args.change))
    with terminate_as_interrupt():
        return run_bisect(
            sides,
            pytest_args=args.pytest_args,
            groups=args.group,
            work=Path(args.work),
            find_links=args.find_links,
            no_index=args.no_index,
            offline=args.offline,
            base_python=args.base_python,
            rounds=args.rounds,
            tolerance=args.tolerance,
            few=args.one_at_a_time,
            json_path=args.json,
        )


def add_bisect(sub: Any) -> None:
    bisect = sub.add_parser(
        "bisect",
        help="which package change between environments A and B carries a regression: "
        "environments built with uv, each judged by gpufit ab against A",
        description="Build A and B (and environments between them) with uv, run gpufit ab A "
        "against B on the suite, and when B regressed find the package (or group of packages "
        "that install only together) that carries it: one at a time when the changes are "
        "few, halving when many. Exit 0: no regression; 1: regression (culprit named, or "
        "undecided); 2: bad input. Options of pytest go after --.",
    )
    bisect.add_argument(
        "pytest_args", nargs="*", metavar="SUITE_OR_PYTEST_ARGS", help="what gpufit ab runs"
    )
    side_a = bisect.add_mutually_exclusive_group(required=True)
    side_a.add_argument("--a-requirements", metavar="FILE", help="A: a lock or requirements file")
    side_a.add_argument(
        "--a-python", metavar="PYTHON", help="A: the packages of this interpreter (its freeze)"
    )
    side_b = bisect.add_mutually_exclusive_group(required=True)
    side_b.add_argument("--b-requirements", metavar="FILE", help="B: a lock or requirements file")
    side_b.add_argument(
        "--change",
        action="append",
        default=[],
        metavar="NAME==VERSION",
        help="B: A with this package at this version (repeat)",
    )
    bisect.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME,NAME",
        help="packages that move together (names or patterns: torch,nvidia-*); groups the "
        "installer refuses to split are found without it",
    )
    bisect.add_argument(
        "--find-links", action="append", default=[], metavar="DIR", help="a wheel folder (repeat)"
    )
    bisect.add_argument("--no-index", action="store_true", help="only the --find-links folders")
    bisect.add_argument(
        "--offline", action="store_true", help="no network: uv's cache and the wheel folders"
    )
    bisect.add_argument(
        "--base-python",
        metavar="PYTHON",
        help="the interpreter of every environment (default: --a-python, else this one)",
    )
    bisect.add_argument("--rounds", type=_positive, help="gpufit ab --rounds, per step")
    bisect.add_argument("--tolerance", type=_percent, help="gpufit ab --tolerance, per step")
    bisect.add_argument(
        "--one-at-a-time",
        type=_positive,
        default=3,
        metavar="N",
        help="try changes one at a time up to N units, halve above (default 3)",
    )
    bisect.add_argument(
        "--work",
        default=".gpufit/bisect",
        metavar="DIR",
        help="environments (kept by the digest of their packages) and gpufit ab reports "
        "(default .gpufit/bisect)",
    )
    bisect.add_argument("--json", metavar="PATH", help="write the answer as JSON")
    bisect.set_defaults(handler=_bisect)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gpufit", description="What this GPU can run.")
    sub = top.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe", help="what GPUs this machine has (NVML; no CUDA context)")
    probe.add_argument("--json", action="store_true", help="print the inventory as JSON")
    probe.add_argument("--simulate", metavar="ID[,ID...]", help=_SIMULATE.help.split(";")[0])
    probe.set_defaults(handler=_probe)

    fit = sub.add_parser("fit", help="memory a model needs, and the verdict per GPU")
    fit.add_argument("model", help="model folder, config.json, or a shipped id (qwen3-30b-a3b)")
    fit.add_argument(
        "--dtype",
        default="bf16",
        help="fp32 bf16 fp16 fp8 int8 int4 fp4 nvfp4 mxfp4 stored (default bf16)",
    )
    fit.add_argument(
        "--kv-dtype", help="KV cache dtype: fp32 bf16 fp16 fp8 int8 (default: the activation dtype)"
    )
    fit.add_argument(
        "--context",
        type=_positive,
        help="tokens per sequence (default 8192, or the model's maximum if smaller)",
    )
    fit.add_argument("--batch", type=_positive, default=1)
    fit.add_argument(
        "--rope-scaling",
        "--hf-overrides",
        dest="rope_scaling",
        metavar="SPEC",
        help="rope scaling as the engine is given it: yarn:4:32768, or the JSON block (vLLM's "
        "--hf-overrides form too); extends the model's maximum context (docs/fit.md)",
    )
    fit.add_argument(
        "--gpu",
        help="ID, N*ID (tensor-parallel), a comma list, or 'local'; "
        "default: this machine's GPUs, else every catalog card",
    )
    fit.add_argument("--json", action="store_true")
    add_engine_options(fit)
    fit.set_defaults(handler=_fit)

    table = sub.add_parser("table", help="compatibility table: models x precisions x GPUs")
    table.add_argument("models", nargs="*", help="default: the shipped models")
    table.add_argument("--gpus", help="comma list of ID or N*ID; default as for fit")
    table.add_argument(
        "--dtypes", default="bf16,fp8,int4", help="comma list of precisions (default bf16,fp8,int4)"
    )
    table.add_argument("--context", type=_positive)
    table.add_argument("--format", default="text", choices=("text", "markdown", "csv", "json"))
    table.set_defaults(handler=_table)

    plan = sub.add_parser(
        "plan",
        help="place every gated test on the runner classes of a pool file, by simulation: a "
        "table, or the GitHub Actions matrix; exit 1 on a gate no class can run",
    )
    plan.add_argument(
        "--runners",
        default="gpufit-runners.yaml",
        metavar="PATH",
        help="the runner-pool file (default gpufit-runners.yaml, as --gpufit-runners)",
    )
    plan.add_argument(
        "--format",
        default="text",
        choices=("text", "github-matrix"),
        help="text (default): class x items and why the rest cannot run there; github-matrix: "
        "one line of JSON for strategy.matrix (runner, labels, gpus, shard, shards, expect, plan)",
    )
    plan.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="what pytest collects, e.g. suites/ tests/"
    )
    plan.set_defaults(handler=_plan)

    add_commands(sub)  # calibrate, upgrade (compare-setups)

    baseline = sub.add_parser(
        "baseline", help="stored baselines: list, show, accept, diff, fleet, plot, migrate"
    )
    dir_help = (
        "the baseline folder (default: GPUFIT_BASELINE_DIR, else ini gpufit_baseline_dir, "
        "else .gpufit/baselines, relative to pytest's rootdir)"
    )
    baseline.add_argument("--dir", help=dir_help)
    # --dir also after the verb (`gpufit baseline migrate --dir X`); SUPPRESS keeps the value
    # given before the verb when it is not repeated after it.
    after_verb = argparse.ArgumentParser(add_help=False)
    after_verb.add_argument("--dir", default=argparse.SUPPRESS, help=dir_help)
    verbs = baseline.add_subparsers(dest="verb", required=True)
    add_verb = functools.partial(verbs.add_parser, parents=[after_verb])
    add_verb("list", help="every stored run, per GPU model and suite").set_defaults(
        handler=_baseline_list
    )
    show = add_verb("show", help="one run's environment and metrics")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_baseline_show)
    accept = add_verb(
        "accept",
        help="make a run the accepted baseline of its GPU model and suite (after a planned "
        "upgrade); prints the files to commit",
    )
    accept.add_argument("run")
    accept.add_argument(
        "--force", action="store_true", help="accept a run even though some of its checks failed"
    )
    accept.set_defaults(handler=_baseline_accept)
    diff = add_verb(
        "diff",
        help="two runs side by side; a report, so it exits 0 on a regression: --exit-code is "
        "the gate form",
        description="Two runs side by side: the environment, each metric's change, outcomes, "
        "and checks measured with other parameters (not comparable). A report, it exits 0 "
        "whatever it shows: --exit-code is the gate form (exit 1 on a regression).",
    )
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument(
        "--tolerance",
        type=_percent,
        default=0.05,
        help="one tolerance for every metric (default 5%%); a suite's baseline.tolerance is "
        "not read, so a metric the gate allows more may show worse here",
    )
    diff.add_argument(
        "--exit-code",
        action="store_true",
        help="the gate form: exit 1 when a metric got worse beyond the tolerance or went "
        "unmeasured, a check stopped passing or was measured with other parameters, or a check "
        "of OLD is missing from NEW (as git diff --exit-code); without it diff exits 0",
    )
    diff.set_defaults(handler=_baseline_diff)
    fleet = add_verb(
        "fleet",
        help="per host, how far each metric sits from the fleet median of its GPU model and "
        "suite (latest run per host), with the host facts (PCIe link, clock events, power "
        "limit, driver)",
    )
    fleet.add_argument("--gpu", help="only this GPU model (its name, e.g. 'NVIDIA H100 80GB HBM3')")
    fleet.add_argument("--suite", help="only this suite")
    fleet.add_argument(
        "--tolerance",
        type=_percent,
        default=0.15,
        help="a host whose recent runs sit, with 95%% confidence, further than this from "
        "the other hosts' is marked WORSE or BETTER (default 15%%)",
    )
    fleet.set_defaults(handler=_baseline_fleet)
    plot = add_verb(
        "plot", help="each metric across stored runs, to a PNG (needs the plot extra: matplotlib)"
    )
    plot.add_argument("--output", default="gpufit-baselines.png")
    plot.set_defaults(handler=_baseline_plot)
    migrate = add_verb(
        "migrate", help="rewrite a format-1 store (one accepted run per GPU) per GPU and suite"
    )
    migrate.set_defaults(handler=_baseline_migrate)

    from pytest_gpufit.ab.command import add_parser as add_ab  # its options and help

    add_ab(sub, _percent, _positive).set_defaults(handler=_ab)
    add_bisect(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        top = parser()
        args, unknown = top.parse_known_args(argv)
    except KeyboardInterrupt:  # Ctrl-C before any command ran: nothing to name, nothing written
        print("gpufit: interrupted", file=sys.stderr)
        return 130
    if unknown and args.command == "bisect" and "--" in unknown:
        # `gpufit bisect suites/x.yaml --a-requirements A ... -- -k decode`: after `--`, pytest's
        # options (as for ab)
        cut = unknown.index("--")
        args.pytest_args = [*args.pytest_args, *unknown[cut + 1 :]]
        unknown = unknown[:cut]
    if unknown:
        if args.command not in ("plan", "ab"):
            top.error(f"unrecognized arguments: {' '.join(unknown)}")
        # `gpufit plan --runners F --gpufit-simulate=x suites/`: options before the first
        # path belong to pytest too.
        args.pytest_args = [*unknown, *args.pytest_args]
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except GpufitError as error:
        print(f"gpufit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        # Ctrl-C: one line (where it stopped, for ab and bisect), no traceback; 130 = 128 +
        # SIGINT, as a shell reports it. Their children were stopped where they ran.
        print(f"gpufit {args.command}: {str(error) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gpufit probe | head`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as error:
        where = f"{Path(error.filename).absolute()}: " if error.filename else ""
        print(f"gpufit: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
