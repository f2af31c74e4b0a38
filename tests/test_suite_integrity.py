"""Suite checks cannot end green by mistake: a broken extra, an out-of-memory that keeps its
memory, a NaN measurement. Driven through real pytest sessions with a fake backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).parent.parent / "fixtures" / "tiny-llama"


def suite(checks: str, targets: tuple[str, ...] = ("bf16",)) -> str:
    """A suite over the tiny config with random weights, one target per dtype."""
    body = "".join(
        f"""
  - name: t-{dtype}
    model: {CONFIG}
    weights: random
    dtype: {dtype}
    device: cpu
    checks:
{checks}"""
        for dtype in targets
    )
    return f"suite: integrity\ntargets:{body}\n"


# ---- a broken or missing torch (#1) ------------------------------------------------------------

BROKEN_IMPORT = """
import importlib.abc
import importlib.machinery
import sys

# As on a runner where {module} is installed but importing it fails (CUDA libraries gone,
# torch and transformers versions that do not match).
for name in list(sys.modules):
    if name.split(".")[0] in ("torch", "transformers") or name.endswith("transformers_backend"):
        del sys.modules[name]


class BrokenLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise {error}


class Broken(importlib.abc.MetaPathFinder):
    # The real package is found (its files are there), but executing it fails.

    def find_spec(self, name, path=None, target=None):
        if name != "{module}":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = BrokenLoader()
        return spec


sys.meta_path.insert(0, Broken())
"""
BROKEN_TORCH = BROKEN_IMPORT.format(
    module="torch",
    error='ImportError("libcudnn.so.9: cannot open shared object file: No such file")',
)

EVERY_CHECK = """      fits: {}
      loads: {}
      generates: {prompt_tokens: 4, max_new_tokens: 2}
      precision: {reference: fp32, prompt_tokens: 4}
"""

BROKEN_REASON = (
    "the transformers backend needs torch and transformers (importing them failed: ImportError: "
    "libcudnn.so.9: cannot open shared object file: No such file); repair or reinstall it: "
    "pip install 'pytest-gpufit[[]hf[]]'"
)


def test_broken_torch_fails_the_gate_naming_the_import_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BROKEN_TORCH)
    pytester.makefile(".gpufit.yaml", broken=suite(EVERY_CHECK))
    result = pytester.runpytest_subprocess("--gpufit-on-missing=fail", "-p", "no:randomly")
    # fits is an estimate and needs no torch: it still runs; the other three are unmet.
    result.assert_outcomes(passed=1, failed=3)
    assert result.ret == 1
    for check in ("loads", "generates", "precision"):
        result.stdout.fnmatch_lines([f"*t-bf16::{check}: {BROKEN_REASON}*"])
    result.stdout.no_fnmatch_line("*None is missing*")
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*site-packages*")


def test_broken_torch_skips_under_the_skip_policy_naming_the_import_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(BROKEN_TORCH)
    pytester.makefile(".gpufit.yaml", broken=suite(EVERY_CHECK))
    result = pytester.runpytest_subprocess("-rs", "-p", "no:randomly")
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == 0
    for line in (10, 11, 12):  # loads, generates, precision
        result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] broken.gpufit.yaml:{line}: {BROKEN_REASON}"])
    result.stdout.no_fnmatch_line("*None is missing*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_mismatched_torch_and_transformers_is_a_broken_extra(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        BROKEN_IMPORT.format(
            module="transformers",
            error="AttributeError(\"module 'torch' has no attribute 'compiler'\")",
        )
    )
    pytester.makefile(".gpufit.yaml", broken=suite("      loads: {}\n"))
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] broken.gpufit.yaml:*: the transformers backend needs torch and "
            "transformers (importing them failed: AttributeError: module 'torch' has no "
            "attribute 'compiler'); repair or reinstall it: pip install 'pytest-gpufit[[]hf[]]'"
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_a_missing_extra_fails_under_the_fail_policy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import sys
        sys.modules["transformers"] = None  # as if the hf extra were not installed
    """)
    pytester.makefile(".gpufit.yaml", nx=suite("      fits: {}\n      loads: {}\n"))
    result = pytester.runpytest_subprocess("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*t-bf16::loads: the transformers backend needs torch and transformers "
            "(transformers is missing: *); install it: pip install 'pytest-gpufit[[]hf[]]'*"
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


# ---- a fake backend, for what a real device does badly ------------------------------------------

FAKE_BACKEND = """
import types
import weakref
from math import nan  # noqa: F401 (BEHAVIOUR may hold NaN)

import pytest_gpufit.suites.runtime as runtime

BEHAVIOUR = {behaviour!r}
EVENTS = []
HELD = []  # weak references to what a failing frame held


class Activations:
    \"\"\"Stands in for the tensors a forward pass holds in its frame.\"\"\"


class OutOfMemory(RuntimeError):
    pass


def alive():
    return [ref() is not None for ref in HELD]


class Config:
    vocab_size = 32

    def get_text_config(self):
        return self


class Model:
    config = Config()


class Loaded:
    model = Model()
    tokenizer = None
    load_seconds = 0.5
    peak_allocated_bytes = None
    wrong_dtype_parameters = ()

    def __init__(self, dtype):
        self.dtype = dtype
        self.calls = 0

    def generate(self, ids, new_tokens):
        self.calls += 1
        if BEHAVIOUR.get("generate_oom"):
            activations = Activations()
            HELD.append(weakref.ref(activations))
            raise OutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
        times = BEHAVIOUR["times"]
        ttft, decode = times[(self.calls - 1) % len(times)]
        return [[1] * BEHAVIOUR.get("produce", new_tokens)], ttft, decode

    def logits(self, ids):
        import torch

        out = torch.zeros(1, 4, 32)
        if BEHAVIOUR.get("nan_logits") and self.dtype != "fp32":
            out[0, 0, 0] = float("nan")
        return out

    def greedy_topk(self, ids, new_tokens, k):
        return dict(tokens=[1], top_ids=[[1, 2]], top_logprobs=[[-0.1, float("nan")]])

    def free_bytes(self):
        return None

    def reference_fp32(self):
        return Loaded("fp32")

    def unload(self):
        EVENTS.append(("unload", self.dtype, alive()))


ATTEMPTS = []


def load(model, weights, dtype, device, trust_remote_code, seed):
    ATTEMPTS.append((dtype, alive()))
    if BEHAVIOUR.get("load_oom_once") == dtype and len([a for a in ATTEMPTS if a[0] == dtype]) == 1:
        partial = Activations()  # the half-loaded model the failed attempt held
        HELD.append(weakref.ref(partial))
        raise OutOfMemory("CUDA out of memory. Tried to allocate 9.00 GiB")
    return Loaded(dtype)


def prompt_ids(loaded, text, batch, tokens, seed):
    return [[1] * tokens] * batch


def free_device(device):
    EVENTS.append(("free_device", device, alive()))


def kl_and_top1(reference, test):
    from pytest_gpufit.backends.transformers_backend import kl_and_top1 as real

    return real(reference, test)


FAKE = types.SimpleNamespace(
    OutOfMemory=OutOfMemory,
    load=load,
    prompt_ids=prompt_ids,
    free_device=free_device,
    kl_and_top1=kl_and_top1,
)
_original = runtime.load_backend
runtime.load_backend = lambda name: FAKE


def pytest_unconfigure(config):
    runtime.load_backend = _original
    print(f"EVENTS={{EVENTS}}")
    print(f"ATTEMPTS={{ATTEMPTS}}")
"""


def fake_backend(pytester: pytest.Pytester, **behaviour: object) -> None:
    pytester.makeconftest(FAKE_BACKEND.format(behaviour=behaviour))


# ---- out of memory gives its memory back (#10) --------------------------------------------------


def test_out_of_memory_is_recovered_after_the_failing_frame_is_gone(
    pytester: pytest.Pytester,
) -> None:
    fake_backend(pytester, generate_oom=True)
    checks = "      generates: {prompt_tokens: 4, max_new_tokens: 2}\n      fits: {}\n"
    pytester.makefile(".gpufit.yaml", oom=suite(checks))
    result = pytester.runpytest("-s", "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*t-bf16::generates: out of memory on cpu, estimate * GB; the device was cleaned "
            "for the next test (CUDA out of memory. Tried to allocate 2.00 GiB)*",
            # The model was dropped and the device emptied once the activations were garbage:
            # inside the except block they were still alive, and no empty_cache could free them.
            "EVENTS=[[]('unload', 'bf16', [[]False[]]), ('free_device', 'cpu', [[]False[]])[]]",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_the_cache_retries_a_load_after_the_failed_attempt_is_gone(
    pytester: pytest.Pytester,
) -> None:
    fake_backend(pytester, load_oom_once="fp32")
    pytester.makefile(".gpufit.yaml", retry=suite("      loads: {}\n", ("bf16", "fp32")))
    result = pytester.runpytest("-s", "-p", "no:randomly")
    # The fp32 load ran out of memory beside the bf16 model: the cache dropped that model and
    # tried once more, with the first attempt's half-loaded weights already freed.
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "EVENTS=[[]('unload', 'bf16', [[]False[]]), ('free_device', 'cpu', [[]False[]])*",
            "ATTEMPTS=[[]('bf16', [[][]]), ('fp32', [[][]]), ('fp32', [[]False[]])[]]",
        ]
    )


# ---- NaN, infinity and inflated rates never pass (#4) --------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("checks", "behaviour", "message"),
    [
        pytest.param(
            "      throughput: {prompt_tokens: 4, new_tokens: 3, warmup: 0, repeats: 3,"
            " min_decode_tok_s: 1}\n",
            {"times": [(0.01, NAN), (0.01, 0.5), (0.01, 0.5)]},
            "*t-bf16::throughput: the backend timed decode at nan s; a real run takes a "
            "positive, finite time*",
            id="one-nan-round-hidden-by-the-median",
        ),
        pytest.param(
            "      throughput: {prompt_tokens: 4, new_tokens: 3, warmup: 0, repeats: 1}\n",
            {"times": [(0.01, 0.0)]},
            "*t-bf16::throughput: the backend timed decode at 0.0 s; a real run takes a "
            "positive, finite time*",
            id="zero-time-is-infinite-throughput",
        ),
        pytest.param(
            "      throughput: {prompt_tokens: 4, new_tokens: 8, warmup: 0, repeats: 1,"
            " min_decode_tok_s: 10}\n",
            {"times": [(0.01, 0.5)], "produce": 2},
            "*t-bf16::throughput: the backend produced 2 tokens where 8 were asked; "
            "throughput is measured on exactly new_tokens*",
            id="early-stop-would-inflate-decode",
        ),
        pytest.param(
            "      precision: {reference: fp32, prompt_tokens: 4}\n",
            {"nan_logits": True},
            "*t-bf16::precision: measured kl = nan: a measurement must be a finite number*",
            id="nan-logits-without-thresholds",
        ),
        pytest.param(
            "      precision: {reference: golden, new_tokens: 1, top_k: 2}\n",
            {},
            "*t-bf16::precision: measured golden.top_logprobs[[]0[]][[]1[]] = nan: a "
            "measurement must be a finite number*",
            id="nan-golden-log-probability",
        ),
    ],
)
def test_a_measurement_that_cannot_be_true_fails_the_check(
    pytester: pytest.Pytester, checks: str, behaviour: dict[str, object], message: str
) -> None:
    if behaviour.get("nan_logits"):
        pytest.importorskip("torch")  # the fake's logits are tensors
    fake_backend(pytester, **behaviour)
    pytester.makefile(".gpufit.yaml", nan=suite(checks))
    result = pytester.runpytest("--gpufit-report=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")
    # The report stays strict JSON (a NaN token breaks jq and JavaScript): null, not NaN.
    text = (pytester.path / "report.json").read_text()
    json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> object:
    raise AssertionError(f"{name} in the JSON report")


def test_repeat_refuses_a_round_the_median_would_hide() -> None:
    from pytest_gpufit.errors import GpufitError
    from pytest_gpufit.measure import repeat

    rounds = iter([{"tok_s": NAN}, {"tok_s": 5.0}, {"tok_s": 6.0}])
    # statistics.median of [nan, 5, 6] is 5.0: the NaN round would vanish into a pass.
    with pytest.raises(GpufitError, match=r"measured tok_s = nan in round 1 of 3: a measurement"):
        repeat(lambda: next(rounds), warmup=0, repeats=3)


def test_the_suite_modules_do_not_import_torch() -> None:
    # A check module that imported torch at the top would crash collection (or a fits check)
    # where torch is broken, instead of the item reporting MissingExtra under the policy.
    code = (
        "import sys\n"
        "import pytest_gpufit.suites.items, pytest_gpufit.suites.checks\n"
        "import pytest_gpufit.suites.runtime, pytest_gpufit.backends, pytest_gpufit.measure\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
