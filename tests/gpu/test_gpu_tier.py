"""The GPU tier: the plugin's claims checked on a real card (run by scripts/gpu-tier.sh).

Every test here is marked ``gpu`` and deselected unless ``--run-gpu-tier`` is given. Figures
go to ``$GPUFIT_TIER_OUT`` (a folder) as JSON, for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # the tier was asked for: say so loudly, do not skip quietly
    pytest.fail("--run-gpu-tier needs a CUDA GPU; torch sees none", pytrace=False)

from pytest_gpufit.fit.estimate import RUNTIME_OVERHEAD_BYTES, estimate  # noqa: E402
from pytest_gpufit.fit.spec import load_spec  # noqa: E402
from pytest_gpufit.hardware.nvml import probe_nvml  # noqa: E402

OUT = Path(os.environ.get("GPUFIT_TIER_OUT", "gpu-tier-out"))


def write(name: str, data: Any) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def test_probe_agrees_with_torch_and_nvidia_smi() -> None:
    inventory = probe_nvml()
    assert inventory.gpus, inventory.reason
    rows = []
    for gpu in inventory.gpus:
        props = torch.cuda.get_device_properties(gpu.index)
        assert gpu.name == props.name
        assert gpu.compute_capability == (props.major, props.minor)
        # torch reports what the CUDA context can see; NVML the whole card: within 2%.
        assert abs(gpu.memory_total_bytes - props.total_memory) / gpu.memory_total_bytes < 0.02
        assert gpu.sm_count in (None, props.multi_processor_count)
        rows.append(
            {
                "gpu": gpu.to_dict(),
                "torch_total_memory": props.total_memory,
                "torch_sm_count": props.multi_processor_count,
            }
        )
    if shutil.which("nvidia-smi"):
        out = (
            subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        visible = [out[i] for i in range(len(inventory.gpus))]
        for gpu, line in zip(inventory.gpus, visible, strict=True):
            name, total_mib, driver = (x.strip() for x in line.split(","))
            assert name == gpu.name and int(total_mib) * 2**20 == gpu.memory_total_bytes
            assert driver == inventory.environment.driver_version
    write("probe-vs-torch", {"inventory": inventory.to_dict(), "torch": rows})


def _kernel(dtype_name: str) -> str:
    """Run a small matmul in the dtype; 'ok', or why not."""
    a = torch.randn(256, 256, device="cuda")
    b = torch.randn(256, 256, device="cuda")
    try:
        if dtype_name in ("bf16", "fp16"):
            dt = torch.bfloat16 if dtype_name == "bf16" else torch.float16
            out = a.to(dt) @ b.to(dt)
            ref = a @ b
            err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
            return "ok" if err < 0.05 else f"error {err:.3g}"
        if dtype_name == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            out = a @ b
            torch.backends.cuda.matmul.allow_tf32 = False
            return "ok" if torch.isfinite(out).all() else "non-finite"
        if dtype_name in ("fp8", "fp8_e4m3"):
            scale = torch.tensor(1.0, device="cuda")
            out = torch._scaled_mm(
                a.to(torch.float8_e4m3fn),
                b.t().contiguous().t().to(torch.float8_e4m3fn),
                scale_a=scale,
                scale_b=scale,
                out_dtype=torch.bfloat16,
            )
            ref = a.to(torch.float8_e4m3fn).float() @ b.to(torch.float8_e4m3fn).float()
            err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
            return "ok" if err < 0.05 else f"error {err:.3g}"
    except (RuntimeError, TypeError) as error:
        return f"failed: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.synchronize()
    return "not verified (no simple kernel)"


def test_native_dtypes_run_a_kernel() -> None:
    inventory = probe_nvml()
    gpu = inventory.gpus[0]
    results = {}
    for dtype_name in ("fp16", "bf16", "tf32", "fp8", "fp4", "int8"):
        claimed = dtype_name in gpu.native_dtypes
        results[dtype_name] = {"claimed_native": claimed, "kernel": _kernel(dtype_name)}
        if claimed and dtype_name in ("fp16", "bf16", "tf32", "fp8"):
            assert results[dtype_name]["kernel"] == "ok", (dtype_name, results[dtype_name])
    write("dtypes", {"gpu": gpu.name, "cc": gpu.cc_text, "results": results})


def test_markers_on_the_real_card(pytester: pytest.Pytester) -> None:
    gpu = probe_nvml().gpus[0]
    have_gb = gpu.memory_total_bytes / 1e9
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.requires_vram({int(have_gb) - 1})
        @pytest.mark.requires_compute_capability("{gpu.cc_text}")
        def test_met(gpu):
            assert gpu.memory_total_bytes > 0

        @pytest.mark.requires_vram({int(have_gb) + 1000})
        def test_unmet():
            pass
    """)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result = pytester.runpytest_subprocess("--gpufit-on-missing=fail")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*needs {int(have_gb) + 1000} GB of GPU memory; GPU0 *"])


MODELS = [("qwen3-0.6b", 4096), ("llama-3.1-8b", 4096), ("qwen3-30b-a3b", 4096)]


@pytest.mark.parametrize(("model", "context"), MODELS)
def test_peak_memory_against_the_estimate(model: str, context: int) -> None:
    from pytest_gpufit.backends.transformers_backend import load, random_prompt, vocab_size

    spec = load_spec(model)
    est = estimate(spec, "bf16", context)
    free, _ = torch.cuda.mem_get_info()
    if est.total_bytes > free:
        pytest.skip(f"{model}: estimate {est.total_bytes / 1e9:.1f} GB > free {free / 1e9:.1f} GB")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loaded = load(spec_path(model), "random", "bf16", "cuda", False)
    load_s = time.perf_counter() - start
    after_load = torch.cuda.max_memory_allocated()
    ids = random_prompt(vocab_size(loaded), 1, context - 32)
    loaded.generate(ids, 32)
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    # The allocator sees no CUDA context: compare it with the estimate less the runtime share.
    comparable = est.total_bytes - RUNTIME_OVERHEAD_BYTES
    row = {
        "model": model,
        "context": context,
        "load_s": round(load_s, 2),
        "estimate_weights": est.weights_bytes,
        "measured_after_load": after_load,
        "estimate_total_less_runtime": comparable,
        "measured_peak": peak,
        "measured_reserved": reserved,
        "weights_gap": round((after_load - est.weights_bytes) / est.weights_bytes, 4),
        "peak_gap": round((peak - comparable) / comparable, 4),
    }
    loaded.unload()
    write(f"memory-{model}", row)
    assert abs(row["weights_gap"]) < 0.10, row
    assert abs(row["peak_gap"]) < 0.10, row


def spec_path(model: str) -> Path:
    from pytest_gpufit.fit.spec import resolve_model

    return resolve_model(model)
