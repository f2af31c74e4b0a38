"""The ``allreduce`` suite check (issue 21, item 5) as users meet it: a YAML suite on gloo across
2 processes with floors and baselines, its collection errors, simulation and the fail policy,
and, with a faked probe and faked ranks, which GPUs a GPU target's ranks are given."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_probe import catalog_probe, nvml_probe

from pytest_gpufit.allreduce import parse_params
from pytest_gpufit.baseline import Store
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.hardware.catalog import catalog_gpu
from pytest_gpufit.suites import json_schema
from pytest_gpufit.suites.kinds import KINDS, model_free
from pytest_gpufit.suites.schema import parse_suite

# A sweep of 2 sizes that gloo runs in about a second (the rank processes import torch).
SMALL = "min_size: 4KiB, max_size: 16KiB, factor: 4, warmup: 1, iters: 3, repeats: 3"


def _suite(pytester: pytest.Pytester, targets: str, head: str = "") -> Path:
    return pytester.makefile(".gpufit.yaml", link=f"suite: link\n{head}targets:\n{targets}")


def _gloo(name: str, extra: str = "") -> str:
    return (
        f"  - name: {name}\n    device: cpu\n    checks:\n"
        f"      allreduce: {{{SMALL}, processes: 2{extra}}}\n"
    )


PAIR = "  - name: pair\n    checks:\n      allreduce: {min_size: 8B, max_size: 1MiB}\n"


# ---- the registry entry ----------------------------------------------------------------------


def test_the_entry_needs_no_model_and_two_gpus_and_yields_the_link_metrics() -> None:
    kind = KINDS["allreduce"]
    assert not kind.uses_backend and kind.reads_model is None and not kind.simulation
    assert model_free(["allreduce"])
    assert kind.requires is not None and kind.requires.count == 2
    assert kind.metrics == ("allreduce_busbw_gb_s", "allreduce_latency_us")


# ---- real gloo runs across 2 processes -------------------------------------------------------


@pytest.fixture
def gloo() -> None:
    pytest.importorskip("torch.distributed")


@pytest.mark.usefixtures("gloo")
def test_a_gloo_suite_measures_and_fails_a_floor_no_cpu_reaches(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, _gloo("gloo") + _gloo("floor", ", min_busbw_gb_s: 1e6"))
    result = pytester.runpytest("-p", "no:randomly", "--gpufit-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*floor::allreduce: all-reduce bus bandwidth * GB/s at 16 KiB is below the floor "
            "of 1,000,000 GB/s (gloo, 2 ranks, fp32)*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["link::gloo: all-reduce gloo, 2 ranks, fp32: bus bandwidth * GB/s at 16 KiB, latency *"]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    metrics = report["measurements"]["link.gpufit.yaml::gloo::allreduce"]["metrics"]
    assert metrics["allreduce_backend"] == "gloo" and metrics["allreduce_ranks"] == 2
    assert metrics["allreduce_busbw_gb_s"] > 0 and metrics["allreduce_latency_us"] > 0
    assert [row["size_bytes"] for row in metrics["allreduce_sweep"]] == [4096, 16384]
    assert all(row["wrong"] == 0 for row in metrics["allreduce_sweep"])


def _accepted(store: Path, gpu: str = "cpu") -> Path:
    folder = Store(store).suite_dir(gpu, "link")
    return folder / "runs" / f"{(folder / 'accepted').read_text().strip()}.json"


@pytest.mark.usefixtures("gloo")
def test_a_gloo_baseline_is_saved_and_a_regression_or_a_floor_fails_the_compare(
    pytester: pytest.Pytester,
) -> None:
    # Tolerances far beyond CPU noise on a shared machine: only the doctored figure can fail.
    head = "baseline: {tolerance: {allreduce_busbw_gb_s: 95%, allreduce_latency_us: 10000%}}\n"
    _suite(pytester, _gloo("gloo"), head)
    args = ["-p", "no:randomly", "--gpufit-baseline-dir=store"]
    pytester.runpytest(*args, "--gpufit-baseline=save").assert_outcomes(passed=1)
    path = _accepted(pytester.path / "store")
    record = json.loads(path.read_text())
    saved = record["results"]["link.gpufit.yaml::gloo::allreduce"]["metrics"]
    assert {"allreduce_busbw_gb_s", "allreduce_latency_us"} <= set(saved)
    saved["allreduce_busbw_gb_s"] *= 1000  # the link once carried 1000 times more
    path.write_text(json.dumps(record))
    result = pytester.runpytest(*args, "--gpufit-baseline=compare")
    result.assert_outcomes(failed=1)
    # 1000x less is -99.9%, printed -100.0% when this run's figure is also low (gloo on 2 cores)
    result.stdout.re_match_lines(
        [r".*all-reduce bus bandwidth GB/s .* -> .* \((-99\.\d|-100\.0)%, tolerance 95%.*"]
    )
    # A floor only judges: the baseline stays comparable, and the floor fails the check.
    _suite(pytester, _gloo("gloo", ", min_busbw_gb_s: 1e6"), head)
    result = pytester.runpytest(*args, "--gpufit-baseline=compare")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is below the floor of 1,000,000 GB/s (gloo, 2 ranks, fp32)*"])
    result.stdout.no_fnmatch_line("*setup changed*")


# ---- collection errors name file, line and field ---------------------------------------------


def test_a_bad_field_is_a_collection_error_naming_file_line_and_field(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, _gloo("gloo").replace("min_size: 4KiB", "min_size: 8"))
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*link.gpufit.yaml:6: targets[[]0].checks.allreduce.min_size: size: expected a size "
            "with its unit such as '8B' or '64MiB', got 8*"
        ]
    )


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ("{allreduce: {max_size: 32GiB}}", r"allreduce.max_size: size: expected 1 B to 16 GiB"),
        (
            "{allreduce: {min_size: 1MiB, max_size: 1KiB}}",
            r"allreduce: min_size: 1 MiB is above max_size 1 KiB",
        ),
        ("{allreduce: {processes: 1}}", r"allreduce.processes: expected a whole number from 2 "),
        ("{allreduce: {dtype: fp8}}", r"allreduce.dtype: expected one of fp32, fp16, bf16, got"),
        ("{allreduce: {backend: mpi}}", r"allreduce.backend: expected one of nccl, gloo, got"),
        ("{allreduce: {size: 8B}}", r"allreduce.size: unknown key; did you mean 'min_size'"),
        ("{allreduce: {min_busbw_gb_s: -1}}", r"allreduce.min_busbw_gb_s: expected a number > 0"),
        ("{allreduce: {}, fits: {}}", r"targets\[0\]: missing required key 'model'"),
    ],
)
def test_bad_values_are_refused_at_collection(tmp_path: Path, checks: str, message: str) -> None:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text(f"suite: s\ntargets:\n  - name: t\n    checks: {checks}\n")
    with pytest.raises(GpufitError, match=r"s.gpufit.yaml:[34]: (targets\[0\].checks.)?" + message):
        parse_suite(path)


SIZE_VALUES = [
    "8B",
    "8 b",
    "4KiB",
    "4kib",
    "64MiB",
    "1.5MiB",
    "16GiB",
    "17GiB",
    "0B",
    "0.4B",
    "1TB",
    "8",
    "8GB",
    8,
    8.0,
    True,
    None,
    "",
    "8 parsecs",
    "²B",
    "1e3B",
]


@pytest.mark.parametrize("key", ["min_size", "max_size"])
def test_the_schema_takes_every_size_the_validator_takes_and_no_bare_number(key: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    parse = KINDS["allreduce"].fields[key]
    schema = json_schema.build_schema()["properties"]["targets"]["items"]["properties"]
    field = schema["checks"]["properties"]["allreduce"]["oneOf"][1]["properties"][key]
    validator = jsonschema.Draft202012Validator(field)
    accepted = []
    for value in SIZE_VALUES:
        try:
            parse(value)
        except GpufitError:
            continue
        accepted.append(value)
        assert validator.is_valid(value), value
    assert accepted == ["8B", "8 b", "4KiB", "4kib", "64MiB", "1.5MiB", "16GiB", "8GB"]
    # Bare numbers would be GB: both refuse them. The range (1 B to 16 GiB) is the validator's.
    assert not any(validator.is_valid(v) for v in (8, 8.0, "8", True, None, "", "²B"))


def test_a_size_written_as_a_bare_number_in_text_is_refused_too() -> None:
    # parse_size reads "8" as 8 GB; an all-reduce sweep from 8 GB was never what "8" meant.
    with pytest.raises(GpufitError, match="min_size: expected a size with its unit .* got '8'"):
        parse_params({"min_size": "8"})


def test_a_target_of_only_allreduce_needs_no_model_and_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text("suite: s\ntargets:\n  - name: t\n    checks: {allreduce: {max_size: 1MiB}}\n")
    (check,) = parse_suite(path).targets[0].checks
    assert check.params == {
        "factor": 2,
        "dtype": "fp32",
        "warmup": 5,
        "iters": 20,
        "repeats": 5,
        "timeout_s": 300.0,
        "max_size": 2**20,
    }


# ---- gating: no GPU, one GPU, simulation ------------------------------------------------------

NO_GPU = """
from pytest_gpufit.hardware.records import Inventory

def pytest_gpufit_probe(config):
    return Inventory(source="fake", reason="no NVIDIA driver here (a test)")
"""

# Ranks that never start: each call is recorded, and rank 0 "prints" a sweep whose figures
# are 10 us + bytes / 50 GB/s per all-reduce (so the bus bandwidth nears 50 GB/s).
FAKE_RANKS = """
import json
import sys
from pytest_gpufit import allreduce

REAL = allreduce._run_ranks

def fake(ranks, config, env, timeout_s, folder):
    call = {{"ranks": ranks, "backend": config["backend"], "cuda": config["cuda"],
             "visible": env.get("CUDA_VISIBLE_DEVICES")}}
    with open({calls!r}, "a") as out:
        out.write(json.dumps(call) + "\\n")
    sizes = [{{"size_bytes": s, "runs_s": [10e-6 + s / 50e9] * 3, "wrong": 0}}
             for s in config["sizes"]]
    return [allreduce.RESULT_TAG + json.dumps({{"sizes": sizes}})] + [""] * (ranks - 1)

def pytest_configure(config):
    allreduce._run_ranks = fake

def pytest_unconfigure(config):
    allreduce._run_ranks = REAL
"""


def _calls(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _fake_ranks(pytester: pytest.Pytester, probe: str) -> None:
    calls = str(pytester.path / "calls.jsonl")
    pytester.makeconftest(probe + FAKE_RANKS.format(calls=calls))


def test_without_a_gpu_it_skips_and_fails_under_the_fail_policy(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, PAIR)
    _fake_ranks(pytester, NO_GPU)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no GPU: no NVIDIA driver here (a test)*"])
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no GPU: no NVIDIA driver here (a test)*"])
    assert _calls(pytester) == []  # never quietly measured on the CPU instead


def test_one_gpu_is_not_enough(pytester: pytest.Pytester) -> None:
    _suite(pytester, PAIR)
    _fake_ranks(pytester, catalog_probe("rtx-pro-6000-blackwell"))
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs 2 GPUs; found 1 (GPU0 NVIDIA RTX PRO 6000*"])
    assert _calls(pytester) == []


def test_under_simulation_it_plans_and_never_runs(pytester: pytest.Pytester) -> None:
    _suite(pytester, PAIR)
    _fake_ranks(pytester, "")
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*h100-sxm")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*simulated: would run on GPU0 NVIDIA H100 80GB HBM3, GPU1 NVIDIA H100 80GB HBM3*"]
    )
    result = pytester.runpytest("-rs", "--gpufit-simulate=h100-sxm")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs 2 GPUs; found 1*"])
    assert _calls(pytester) == []


# ---- which GPUs a GPU target's ranks get (faked probe, faked ranks) -------------------------

THREE = (
    (
        "[FakeCard(uuid='GPU-A'), FakeCard(uuid='GPU-B'), FakeCard(uuid='GPU-C')], "
        "links={{(0, 1): LINK_SCENARIOS['across-sockets-p2p-off'], "
        "(0, 2): LINK_SCENARIOS['across-sockets-p2p-off'], "
        "(1, 2): LINK_SCENARIOS['pcie-same-switch']}}"
    )
    .replace("{{", "{")
    .replace("}}", "}")
)


def test_the_ranks_run_on_the_gpus_the_requirement_picked(pytester: pytest.Pytester) -> None:
    _suite(pytester, PAIR)
    _fake_ranks(pytester, nvml_probe(THREE))
    pytester.runpytest("--gpufit-on-missing=fail").assert_outcomes(passed=1)
    # P2P between the first two GPUs is off: a p2p requirement picks GPU1 and GPU2.
    _suite(pytester, PAIR, "requires: {p2p: true}\n")
    pytester.runpytest("--gpufit-on-missing=fail").assert_outcomes(passed=1)
    # --gpufit-devices keeps GPU0 and GPU2, which do not reach each other.
    result = pytester.runpytest("--gpufit-on-missing=fail", "--gpufit-devices=0,2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs P2P between 2 GPUs; GPU0-GPU2 P2P read/write not*"])
    # Three ranks when the target asks three GPUs.
    _suite(pytester, PAIR.replace("    checks:", "    requires: {count: 3}\n    checks:"))
    pytester.runpytest("--gpufit-on-missing=fail").assert_outcomes(passed=1)
    assert _calls(pytester) == [
        {"ranks": 2, "backend": "nccl", "cuda": True, "visible": "GPU-A,GPU-B"},
        {"ranks": 2, "backend": "nccl", "cuda": True, "visible": "GPU-B,GPU-C"},
        {"ranks": 3, "backend": "nccl", "cuda": True, "visible": "GPU-A,GPU-B,GPU-C"},
    ]


def test_an_outer_cuda_visible_devices_is_honoured(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _suite(pytester, PAIR)
    _fake_ranks(pytester, catalog_probe("3*h100-sxm"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    pytester.runpytest("--gpufit-devices=1,2").assert_outcomes(passed=1)
    assert [c["visible"] for c in _calls(pytester)] == ["5,6"]


def test_a_regression_is_confirmed_on_the_same_gpus(pytester: pytest.Pytester) -> None:
    _suite(pytester, PAIR, "baseline: {confirm: 1}\n")
    _fake_ranks(pytester, catalog_probe("2*rtx-pro-6000-blackwell"))
    args = ["-p", "no:randomly", "--gpufit-baseline-dir=store"]
    pytester.runpytest(*args, "--gpufit-baseline=save").assert_outcomes(passed=1)
    accepted = _accepted(pytester.path / "store", catalog_gpu("rtx-pro-6000").name)
    record = json.loads(accepted.read_text())
    figures = record["results"]["link.gpufit.yaml::pair::allreduce"]["metrics"]
    figures["allreduce_busbw_gb_s"] *= 2
    accepted.write_text(json.dumps(record))
    result = pytester.runpytest(*args, "--gpufit-baseline=compare")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*all-reduce bus bandwidth GB/s * (-50.0%*"])
    # Saved once, measured and re-measured once: each time NCCL on both GPUs, never gloo.
    calls = _calls(pytester)
    assert len(calls) == 3
    assert all(c == {"ranks": 2, "backend": "nccl", "cuda": True, "visible": "0,1"} for c in calls)


def test_nccl_on_the_cpu_is_refused_before_any_rank_starts(pytester: pytest.Pytester) -> None:
    _suite(pytester, _gloo("gloo", ", backend: nccl"))
    _fake_ranks(pytester, NO_GPU)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*gloo::allreduce: backend: nccl runs on GPUs (device: cuda); on the CPU only gloo*"]
    )
    assert _calls(pytester) == []


# ---- the GPU tier's link suite (tests/gpu/link-2gpu.gpufit.yaml) -----------------------------

LINK_SUITE = Path(__file__).parent / "gpu" / "link-2gpu.gpufit.yaml"


def test_the_link_suite_gates_two_gpus_with_p2p_and_has_floors() -> None:
    suite = parse_suite(LINK_SUITE)
    assert suite.requirement is not None
    assert (suite.requirement.count, suite.requirement.p2p) == (2, True)
    (target,) = suite.targets
    (check,) = target.checks
    assert target.model is None and target.device == "cuda"
    assert check.kind == "allreduce" and check.params["dtype"] == "bf16"
    assert check.params["min_busbw_gb_s"] > 0 and check.params["max_latency_us"] > 0


@pytest.mark.parametrize(
    ("scenario", "outcome"),
    [("pcie-same-switch", "passed"), ("p2p-disabled", "failed")],
)
def test_the_link_suite_on_a_faked_pair(
    pytester: pytest.Pytester, scenario: str, outcome: str
) -> None:
    pytester.makefile(".gpufit.yaml", link=LINK_SUITE.read_text())
    cards = f"[FakeCard(), FakeCard(uuid='GPU-2')], links={{(0, 1): LINK_SCENARIOS[{scenario!r}]}}"
    _fake_ranks(pytester, nvml_probe(cards))
    result = pytester.runpytest("--gpufit-on-missing=fail")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":  # P2P off: the requirement fails before any rank starts
        result.stdout.fnmatch_lines(["*needs P2P between 2 GPUs; GPU0-GPU1 P2P read/write dis*"])
        assert _calls(pytester) == []
    else:
        assert [c["ranks"] for c in _calls(pytester)] == [2]
        result.stdout.fnmatch_lines(
            [
                "link-2gpu::pair: all-reduce nccl, 2 ranks, bf16: bus bandwidth 49.8 GB/s at "
                "128 MiB, latency 10 us at 8 B"
            ]
        )


def test_the_link_suite_under_simulation(pytester: pytest.Pytester) -> None:
    pytester.makefile(".gpufit.yaml", link=LINK_SUITE.read_text())
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*rtx-pro-6000-blackwell")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*simulated: would run on GPU0 NVIDIA RTX PRO 6000*GPU1*"])
    result = pytester.runpytest("-rs", "--gpufit-simulate=2*rtx-4090")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs P2P between 2 GPUs; GPU0-GPU1*"])


def test_gpufit_plan_places_the_link_suite_on_a_class_with_a_p2p_pair(
    pytester: pytest.Pytester,
) -> None:
    # Before the classes' simulated cards carried their pairs, no class could meet p2p: true.
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "link-2gpu.yaml").write_text(LINK_SUITE.read_text())
    pytester.makefile(
        ".yaml",
        runners="runners:\n"
        "  - {name: pro6000x2, labels: [gpu], gpus: 2*rtx-pro-6000-blackwell}\n"
        "  - {name: rtx4090x2, labels: [gpu], gpus: 2*rtx-4090}\n",
    )
    result = pytester.run(
        sys.executable, "-m", "pytest_gpufit.cli", "plan", "--runners", "runners.yaml", "suites"
    )
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    assert "rtx4090x2 cannot run:" in out and "GPU0-GPU1 P2P read/write not supported" in out
    assert "pro6000x2 cannot run" not in out
