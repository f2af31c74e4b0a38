"""The ``gpufit calibrate`` and ``gpufit upgrade`` (alias ``compare-setups``) subcommands.

Kept out of ``cli.py`` so that the command table there stays one line per command; each handler
imports the fit engine late, as ``gpufit table`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pytest_gpufit.engines.registry import DEFAULT as DEFAULT_ENGINE
from pytest_gpufit.engines.registry import NAMES, check_engine
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.link_time import parse_topology
from pytest_gpufit.numbers import parse_whole


def _calibrate(args: argparse.Namespace) -> int:
    from pytest_gpufit.fit.logs import calibrate_text, read_log_file, render  # late: this command

    for option, value in (("--model", args.model), ("--dtype", args.dtype)):
        if value is not None and not value.strip():
            raise GpufitError(f"{option}: set but empty; give a value or leave the option out")
    gpu, count = None, None
    if args.gpu is not None:
        (setup,) = _one_setup(args.gpu, "--gpu")
        gpu, count = setup.gpu, setup.count
    results = [
        calibrate_text(
            read_log_file(path),
            path,
            model=args.model,
            gpu=gpu,
            precision=args.dtype,
            tensor_parallel=args.tensor_parallel,
            base=Path.cwd(),
            default_tensor_parallel=count,
        )
        for path in args.logs
    ]
    print(render(results, "json" if args.json else "text"))
    return 0


def _one_setup(text: str, option: str) -> list[Any]:
    from pytest_gpufit.fit.table import parse_setups  # late: the catalog's setups, on use

    if not text.strip():
        raise GpufitError(f"{option}: set but empty; give a catalog id such as h100 or 2*h100")
    setups = parse_setups(text, option)
    if len(setups) != 1:
        raise GpufitError(f"{option}: one setup (ID or N*ID), not a list: {text!r}")
    return setups


def _upgrade(args: argparse.Namespace) -> int:
    # late: only `gpufit upgrade` loads the planner (~45 ms)
    from pytest_gpufit.fit.compare_setups import LinkChoice, compare, render
    from pytest_gpufit.fit.context import parse_rope_scaling
    from pytest_gpufit.fit.table import default_models

    (a,) = _one_setup(args.a, "first setup")
    (b,) = _one_setup(args.b, "second setup")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes:
        raise GpufitError(f"--dtypes: no dtype given in {args.dtypes!r}; e.g. --dtypes bf16,fp8")
    if any(not m.strip() for m in args.models):
        raise GpufitError("a model name is empty; give a shipped id or a folder")
    engine = check_engine(args.engine)
    rope = None if args.rope_scaling is None else parse_rope_scaling(args.rope_scaling)
    link = LinkChoice(parse_topology(args.topology), _p2p(args.p2p))
    _check_nvlink(args.topology, link.topology, (a, b))
    rows = compare(
        args.models or default_models(),
        a,
        b,
        dtypes,
        args.context,
        engine,
        rope,
        concurrency=args.concurrency,
        link=link,
    )
    print(render(rows, a, b, args.format))
    return 0


def _check_nvlink(text: str, topology: str, setups: tuple[Any, ...]) -> None:
    """``--topology nvlink`` (or ``NV#``) for cards the catalog knows as PCIe-only is an error:
    the plan would model a link those cards cannot have."""
    from pytest_gpufit.engines.planning import interconnect  # late: the planner, on use

    if topology != "nvlink":
        return
    for setup in setups:
        if setup.count > 1 and interconnect(setup.gpu).kind == "pcie":
            card = setup.gpu.catalog_id or setup.id
            raise GpufitError(
                f"--topology {text}: {card} has no NVLink (the catalog: PCIe only); give how "
                "its cards are joined over PCIe: PIX, PXB, PHB, NODE, SYS (nvidia-smi topo -m)"
            )


def _p2p(text: str | None) -> bool | None:
    """``--p2p on|off``; None (not given): the catalog's answer for the card."""
    if text is None:
        return None
    key = text.strip().lower()
    if key not in ("on", "off"):
        raise GpufitError(f"--p2p: expected on or off, got {text!r}")
    return key == "on"


def _positive(text: str) -> int:
    try:
        return parse_whole(text, text=True, maximum=999_999_999)
    except GpufitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(sub: Any) -> None:
    """Add ``calibrate`` and ``upgrade`` to the ``gpufit`` subparsers."""
    cal = sub.add_parser(
        "calibrate",
        help="hold vLLM/SGLang/llama.cpp server logs against the fit engine's plan",
        description="Read each server log, find the model, dtype, tensor-parallel size and "
        "knobs it states, and print each figure the log reports beside the plan's prediction.",
    )
    cal.add_argument("logs", nargs="+", metavar="LOG", help="a server's start-up log")
    cal.add_argument("--model", help="the model (shipped id or folder) when the log's is not one")
    cal.add_argument("--dtype", help="the precision when the log does not say (bf16, fp8...)")
    cal.add_argument(
        "--gpu",
        help="the card the log ran on (catalog id, N*ID); without it, figures that "
        "depend on the card are not compared",
    )
    cal.add_argument("--tensor-parallel", type=_positive, help="when the log does not say")
    cal.add_argument("--json", action="store_true")
    cal.set_defaults(handler=_calibrate)

    up = sub.add_parser(
        "upgrade",
        aliases=["compare-setups"],
        help="what a second (or another) setup adds: every way to use its cards (tensor, "
        "pipeline, expert parallel, replicas) with memory, KV cache, requests at once and "
        "decode, the link's all-reduce counted",
    )
    up.add_argument("a", metavar="FROM", help="the setup you have: ID or N*ID")
    up.add_argument("b", metavar="TO", help="the setup you consider: ID or N*ID")
    up.add_argument("models", nargs="*", help="default: the shipped models")
    up.add_argument("--dtypes", default="bf16,fp8", help="comma list (default bf16,fp8)")
    up.add_argument("--context", type=_positive, help="tokens (default 8192 or the model's max)")
    up.add_argument("--engine", default=DEFAULT_ENGINE, help=" ".join(NAMES))
    up.add_argument(
        "--rope-scaling",
        "--hf-overrides",
        dest="rope_scaling",
        metavar="SPEC",
        help="rope scaling as the engine is given it (yarn:4:32768 or JSON): a context beyond "
        "the trained length",
    )
    up.add_argument(
        "--concurrency",
        type=_positive,
        default=16,
        metavar="N",
        help="requests at once for the aggregate decode (default 16; capped by what the KV "
        "cache holds at --context)",
    )
    up.add_argument(
        "--topology",
        default="host-bridge",
        metavar="LEVEL",
        help="how the cards are joined: single-switch (PIX), multiple-switches (PXB), "
        "host-bridge (PHB, the default: a workstation's CPU slots), numa-node (NODE), system "
        "(SYS: across sockets); NVLink cards are NVLink whatever this says",
    )
    up.add_argument(
        "--p2p",
        metavar="on|off",
        help="peer-to-peer between the cards (default: the catalog's answer for the card; on "
        "where it has none)",
    )
    up.add_argument("--format", default="text", choices=("text", "markdown", "json"))
    up.set_defaults(handler=_upgrade)
