"""The engine registry: one module per engine behind one protocol, read by every surface."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_gpufit.engines import registry
from pytest_gpufit.engines.identify import engine_from, engine_from_command, engine_probes
from pytest_gpufit.engines.knobs import FIELDS, cli_options, parse_knobs
from pytest_gpufit.engines.logs import log_engine
from pytest_gpufit.engines.protocol import EngineKnobs
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.markers import SPECS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", registry.NAMES)
def test_each_registered_name_is_its_module_engine(name: str) -> None:
    the_engine = registry.engine(name)
    assert the_engine.name == name
    # Every knob sets a field EngineKnobs has; the options are spelled as options.
    for knob in the_engine.knobs:
        assert knob.field in FIELDS
        assert all(option.startswith("-") for option in knob.options)
    assert the_engine.split
    assert all(path.startswith("/") for path in the_engine.probes)


def test_an_unknown_engine_is_one_error_naming_the_place() -> None:
    with pytest.raises(GpufitError, match=r"^--engine: unknown engine 'tgi'; accepted: vllm, "):
        registry.check_engine("tgi")
    with pytest.raises(GpufitError, match="unknown engine 'x'"):
        registry.engine("x")


def test_aliases_name_the_engine() -> None:
    assert registry.check_engine(" llamacpp ") == "llama.cpp"
    assert registry.check_engine("VLLM") == "vllm"
    assert parse_knobs("llama-server", ctx_size=4096).engine == "llama.cpp"


def test_the_requires_fit_schema_lists_the_registry() -> None:
    fit = next(s for s in SPECS if s.name == "requires_fit")
    engine = next(p for p in fit.params if p.name == "engine")
    assert engine.schema == {"enum": [*registry.NAMES, None]}


def test_cli_options_come_from_the_engines_knobs() -> None:
    options = cli_options()
    assert options["--mem-fraction-static"] == ("gpu_memory_utilization", ("sglang",))
    # An option several engines spell alike is shared by all of them, in the registry's order.
    owners = tuple(
        e.name
        for e in registry.all_engines()
        if any("--max-model-len" in k.options for k in e.knobs)
    )
    assert {"vllm", "sglang", "transformers"} <= set(owners)
    assert options["--max-model-len"] == ("max_model_len", owners)
    assert options["--ctx-size"] == ("max_model_len", ("llama.cpp",))
    # Every option of every engine is one there, and nothing else is.
    expected = {k.options[-1] for e in registry.all_engines() for k in e.knobs if k.options}
    assert set(options) == expected


def test_knob_not_of_this_engine_names_the_engine_and_its_knobs() -> None:
    with pytest.raises(GpufitError, match=r"--enforce-eager does not apply to llama\.cpp; its k"):
        parse_knobs("llama.cpp", enforce_eager=True)
    assert parse_knobs("sglang", mem_fraction_static=0.5) == EngineKnobs(
        "sglang", gpu_memory_utilization=0.5
    )


def test_probes_ask_the_specific_engines_before_the_generic_one() -> None:
    probes = engine_probes()
    generic = [p for e in registry.all_engines() if e.generic for p in e.probes]
    assert probes[-len(generic) :] == tuple(generic) == ("/version",)
    assert set(probes) == {p for e in registry.all_engines() for p in e.probes}
    # An SGLang server that also answers /version like vLLM is SGLang.
    both = {"/get_server_info": {"version": "0.5.4"}, "/version": {"version": "0.5.4"}}
    assert engine_from(both).engine == "sglang"


def test_an_owner_that_is_no_engine_names_none() -> None:
    """``transformers serve`` lists a local model as owned_by "local" (a Hub one by its
    organisation): that is not an engine (it was reported as "engine local")."""
    assert engine_from({}, owners=("local",)).engine is None
    assert engine_from({}, owners=("Qwen",)).engine is None
    assert engine_from({}, owners=("vllm",)).engine == "vllm"
    assert engine_from({}, owners=("", "llamacpp")).engine == "llama.cpp"


@pytest.mark.parametrize(
    ("command", "engine"),
    [
        (
            ["{python}", "-m", "transformers.cli.transformers", "serve", "m", "--port", "1"],
            "transformers",
        ),
        (["transformers", "serve", "/models/x"], "transformers"),
        (["vllm", "serve", "Qwen/Qwen3-8B"], "vllm"),
        (["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "x"], "vllm"),
        (["python3", "-m", "sglang.launch_server", "--model-path", "x"], "sglang"),
        (["/opt/llama.cpp/llama-server", "-m", "x.gguf"], "llama.cpp"),
        (["python", "fake_server.py"], None),
    ],
)
def test_engine_from_the_launch_command(command: list[str], engine: str | None) -> None:
    facts = engine_from_command(command)
    assert facts.engine == engine
    assert facts.source == ("launch command" if engine else None)


def test_a_log_is_read_by_the_engine_whose_marks_it_holds() -> None:
    sglang = "[2025 TP0] Load weight end. type=X, dtype=torch.bfloat16, mem usage=7.08 GB."
    engine = log_engine(sglang)
    assert engine is not None and engine.name == "sglang"
    vllm = "INFO [gpu_model_runner.py:1] Model loading took 7.75 GiB memory and 3 seconds"
    engine = log_engine(vllm)
    assert engine is not None and engine.name == "vllm"


def test_knobs_are_a_frozen_record() -> None:
    knobs = parse_knobs("vllm", max_model_len=8192)
    with pytest.raises(dataclasses.FrozenInstanceError):
        knobs.max_model_len = 1  # type: ignore[misc]


def test_importing_the_registry_loads_no_engine_module() -> None:
    """The markers read ``NAMES`` at import: the engines (and the fit estimator) load on use."""
    code = (
        "import sys, pytest_gpufit.plugin, pytest_gpufit.engines.registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('pytest_gpufit.engines.', "
        "'pytest_gpufit.fit'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    # fit.request is the FitRequest record the marker table builds (a dataclass, no estimator).
    assert out.stdout.strip() == (
        "['pytest_gpufit.engines.protocol', 'pytest_gpufit.engines.records', "
        "'pytest_gpufit.engines.registry', 'pytest_gpufit.fit', 'pytest_gpufit.fit.request']"
    )
