"""The check-kind registry and the backend capabilities (issue 19, item 2): one entry per kind
is what the validator, the JSON Schema, the items and the capability errors read, and a check
written once over a capability runs on any backend that has it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pytest_gpufit.backends import CAPABILITIES, CAPABILITY_TEXT
from pytest_gpufit.backends.capabilities import (
    Generate,
    Generated,
    GoldenTopK,
    InProcessModel,
    Prompt,
)
from pytest_gpufit.backends.in_process import InProcess
from pytest_gpufit.backends.streamed import Streamed
from pytest_gpufit.baseline.compare import LEVEL_METRICS, METRICS
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.serving.client import StreamResult
from pytest_gpufit.suites import fields, json_schema, kinds
from pytest_gpufit.suites.context import CheckFailed, Context
from pytest_gpufit.suites.kinds import KINDS, CheckKind
from pytest_gpufit.suites.model_checks import run_generates, run_throughput
from pytest_gpufit.suites.schema import parse_suite

# ---- the table is consistent -----------------------------------------------------------------


def test_every_default_is_a_value_its_field_accepts() -> None:
    for kind in KINDS.values():
        for key, value in kind.defaults.items():
            assert key in kind.fields, f"{kind.name}.{key}"
            assert kind.fields[key](value) == value


def test_every_need_names_a_known_capability_and_a_field_of_its_kind() -> None:
    for kind in KINDS.values():
        for need in kind.needs:
            assert need.capability in CAPABILITY_TEXT, f"{kind.name}: {need.capability}"
            assert need.field is None or need.field in kind.fields, f"{kind.name}: {need.field}"


def test_the_metrics_the_kinds_yield_are_the_ones_a_baseline_judges() -> None:
    yielded = [metric for kind in KINDS.values() for metric in kind.metrics]
    assert len(yielded) == len(set(yielded))  # each metric comes from one kind
    assert set(yielded) == set(METRICS) | set(LEVEL_METRICS)


def test_only_the_estimate_runs_under_simulation() -> None:
    assert [name for name, kind in KINDS.items() if kind.simulation] == ["fits"]


def test_the_json_schema_lists_each_kind_and_its_fields_in_registry_order() -> None:
    target = json_schema.build_schema()["properties"]["targets"]["items"]
    checks = target["properties"]["checks"]["properties"]
    assert list(checks) == list(KINDS)
    for name, spec in checks.items():
        assert list(spec["oneOf"][1]["properties"]) == list(KINDS[name].fields)


# ---- capabilities: what a backend declares is what its implementation has ----------------------

PROTOCOL = {
    "generate": Generate,
    "throughput": Generate,
    "token_ids": Generate,
    "batch": Generate,
    "golden": GoldenTopK,
    "load": InProcessModel,
    "peak_memory": InProcessModel,
    "fp32_logits": InProcessModel,
}


def test_each_declared_capability_is_implemented_and_no_undeclared_one_is() -> None:
    served = cast(Any, SimpleNamespace())
    bound = {
        "transformers": InProcess(lambda: cast(Any, None), lambda: None, 0),
        "openai": Streamed(served),
    }
    for backend, capabilities in CAPABILITIES.items():
        for capability, protocol in PROTOCOL.items():
            has = isinstance(bound[backend], protocol)
            # A protocol serves several capabilities: declaring one means implementing it.
            assert has or capability not in capabilities, f"{backend}: {capability}"
        assert (isinstance(bound[backend], Streamed)) == ("serve" in capabilities)
    assert not isinstance(bound["openai"], InProcessModel)


def test_the_streamed_generation_counts_usage_tokens_else_chunks() -> None:
    def result(completion: int | None) -> StreamResult:
        return StreamResult(0.1, (0.1,), 0.5, " a b", 2, 7, completion, "length", True, None, 0.0)

    served = SimpleNamespace(
        request=lambda prompt, max_tokens, **kw: (prompt, max_tokens, kw),
        stream=lambda request: result(None if request[2] else 3),
    )
    gen = Streamed(cast(Any, served))
    plain = gen.generate(Prompt("hi", None), 4)
    assert (plain.count, plain.prompt_tokens, round(plain.decode_s, 3)) == (3, 7, 0.4)
    forced = gen.generate(Prompt("hi", None), 4, ignore_eos=True)  # no usage: the chunks
    assert forced.count == 2 and forced.stream is not None and forced.stream.text == " a b"


# ---- a check is written once over its capability -------------------------------------------------


class FakeGenerate:
    """A third backend: only the Generate capability, with a chosen count and times."""

    def __init__(self, in_process: bool, count: int, ttft_s: float = 0.1) -> None:
        self.in_process = in_process
        self.count, self.ttft_s = count, ttft_s
        self.asked: list[tuple[int, bool]] = []

    def guard(self, metrics: dict[str, Any], failures: list[str]) -> AbstractContextManager[None]:
        return nullcontext()

    def prompt(
        self, text: str | None, tokens: int, batch: int = 1, timeout_s: float = 120.0
    ) -> Prompt:
        return Prompt(text or "x " * tokens, tokens, counted=not self.in_process)

    def generate(self, prompt: Prompt, new_tokens: int, *, ignore_eos: bool = False) -> Generated:
        self.asked.append((new_tokens, ignore_eos))
        ids = list(range(self.count)) if self.in_process else None
        return Generated(self.count, self.ttft_s, 0.5, prompt.tokens, ids)

    def decode(self, token_ids: list[int]) -> str | None:
        return " ".join(map(str, token_ids))


def _context(bound: FakeGenerate) -> Context:
    target = SimpleNamespace(name="t", backend="fake", model=None, device="cpu")
    ctx = Context(cast(Any, target), None, cast(Any, None))
    ctx._bound = bound
    assert isinstance(bound, Generate)
    return ctx


THROUGHPUT = {
    "prompt_tokens": 8,
    "new_tokens": 6,
    "batch": 1,
    "warmup": 0,
    "repeats": 1,
    "prompts": "unique",
}


def test_throughput_runs_on_any_generate_and_asks_for_exactly_new_tokens() -> None:
    fake = FakeGenerate(in_process=False, count=6)
    ctx = _context(fake)
    run_throughput(ctx, {**THROUGHPUT, "min_decode_tok_s": 1})
    assert fake.asked == [(6, True)]
    assert ctx.metrics["prefill_tok_s"] == 80.0 and ctx.metrics["decode_tok_s"] == 10.0
    assert ctx.metrics["prompt_tokens"] == 8 and not ctx.failures


@pytest.mark.parametrize("in_process", [True, False])
def test_a_short_run_fails_throughput_in_process_and_from_a_server(in_process: bool) -> None:
    """Was a note from a server (issue 18.3): the rates would be of another run's length."""
    with pytest.raises(CheckFailed, match="produced 3 tokens where 6 were asked"):
        run_throughput(_context(FakeGenerate(in_process=in_process, count=3)), THROUGHPUT)


def test_an_in_process_timer_of_zero_fails_where_a_stream_records_zero() -> None:
    with pytest.raises(CheckFailed, match="timed time to first token at 0.0 s"):
        run_throughput(_context(FakeGenerate(in_process=True, count=6, ttft_s=0.0)), THROUGHPUT)
    ctx = _context(FakeGenerate(in_process=False, count=6, ttft_s=0.0))
    run_throughput(ctx, THROUGHPUT)
    assert ctx.metrics["prefill_tok_s"] == 0.0


def test_generates_checks_the_count_and_tokens_where_the_backend_gives_them() -> None:
    params = {"prompt_tokens": 4, "max_new_tokens": 5, "expect_tokens": [0, 1, 9]}
    fake = FakeGenerate(in_process=True, count=4)
    ctx = _context(fake)
    run_generates(ctx, {**params, "expect_contains": "0 1"})
    assert fake.asked == [(5, True)]  # exactly max_new_tokens, from a server too (issue 18.4)
    assert ctx.failures == [
        "the backend produced 4 tokens where 5 were asked",
        "tokens [0, 1, 2] != expected [0, 1, 9]",
    ]
    assert ctx.metrics["tokens"] == [0, 1, 2, 3] and ctx.metrics["text"] == "0 1 2 3"


def test_a_check_asking_a_capability_its_backend_lacks_is_an_internal_error() -> None:
    ctx = _context(FakeGenerate(in_process=True, count=1))
    with pytest.raises(GpufitError, match="the fake backend has no server .*internal error"):
        ctx.server()


# ---- a kind that asks no backend and reads no model (such as allreduce) -----------------------


def _waits(ctx: Context, params: dict[str, Any]) -> None:
    ctx.metrics["waited_s"] = params["seconds"]


WAITS = CheckKind(
    "waits",
    _waits,
    fields={"seconds": fields.seconds},
    defaults={"seconds": 1.0},
    uses_backend=False,
)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.KINDS, "waits", WAITS)


def _suite(tmp_path: Path, checks: str) -> Path:
    path = tmp_path / "s.gpufit.yaml"
    path.write_text(f"suite: s\ntargets:\n  - name: t\n    device: cpu\n    checks: {checks}\n")
    return path


@pytest.mark.usefixtures("waits")
def test_a_target_of_model_free_checks_needs_no_model(tmp_path: Path) -> None:
    suite = parse_suite(_suite(tmp_path, "{waits: {seconds: 2s}}"))
    (check,) = suite.targets[0].checks
    assert (check.kind, check.params) == ("waits", {"seconds": 2.0})
    with pytest.raises(
        GpufitError, match=r"s.gpufit.yaml:3: targets\[0\]: missing required key 'model'"
    ):
        parse_suite(_suite(tmp_path, "{waits: {}, loads: {}}"))


def test_without_such_a_kind_every_transformers_target_needs_a_model(tmp_path: Path) -> None:
    with pytest.raises(GpufitError, match="missing required key 'model'"):
        parse_suite(_suite(tmp_path, "{fits: {}}"))


@pytest.mark.usefixtures("waits")
def test_the_json_schema_agrees_on_model_free_checks() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema.build_schema()
    target = {"name": "t", "checks": {"waits": {"seconds": 2}}}
    jsonschema.validate({"suite": "s", "targets": [target]}, schema)
    target["checks"]["loads"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"suite": "s", "targets": [target]}, schema)
