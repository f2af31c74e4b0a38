"""Server logs of several engines and versions (real excerpts, fixtures/engine-logs/, each file
names its source) read into the setup they state and the figures they report; ``gpufit
calibrate`` sets those figures beside the engine plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpufit.cli import main
from pytest_gpufit.serving.facts import parse_engine_log, parse_log_setup, read_engine_log

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "engine-logs"


def read(name: str) -> str:
    return (LOGS / name).read_text()


def test_every_fixture_quotes_its_source() -> None:
    files = sorted(LOGS.glob("*.log"))
    assert len(files) >= 10
    for file in files:
        assert file.read_text().startswith("# source: "), file.name


# (file, weights GiB/GPU, KV GiB/GPU, KV tokens, "# GPU blocks", concurrency, its request length)
FIGURES = [
    ("vllm-0.7-v1-llama31-70b-w8a8.log", 67.7229, None, None, 1381, 10.79, 2048),
    ("vllm-0.6-v0-bamba-profile.log", 18.4902, 34.78, None, 189945, 2967.89, 1024),
    ("vllm-0.8-v1-qwen3-tp4.log", 14.2474, None, None, None, None, None),
    ("vllm-v1-kv-fp8.log", None, 10.55, 230528, None, 2.31, 100000),
    ("vllm-0.24-v1-nondefault-args.log", None, 5.98, 567978, None, 4.33, 131072),
    ("sglang-qwen3-14b-tp4.log", 7.08, 11.38, 298447, None, None, None),
    ("sglang-qwen3-235b-fp8-tp4.log", None, 16.46, 367404, None, None, None),
    ("sglang-deepseek-v3-mla.log", 107.07, 17.16, 524288, None, None, None),
    ("llamacpp-8gpu-q4-cache.log", 25338.47 / 1024, 5824 / 1024, 16384, None, None, None),
    ("llamacpp-b4701-small.log", None, 144 / 1024, None, None, None, None),
]


@pytest.mark.parametrize(("name", "weights", "kv", "tokens", "blocks", "conc", "length"), FIGURES)
def test_figures_of_each_engine_and_version(
    name: str,
    weights: float | None,
    kv: float | None,
    tokens: int | None,
    blocks: int | None,
    conc: float | None,
    length: int | None,
) -> None:
    a = read_engine_log(read(name)).allocation
    assert a.weights_gib == pytest.approx(weights) if weights else a.weights_gib is None
    assert a.kv_cache_gib == pytest.approx(kv, abs=1e-4) if kv else a.kv_cache_gib is None
    assert (a.kv_cache_tokens, a.kv_cache_blocks) == (tokens, blocks)
    assert (a.max_concurrency, a.concurrency_tokens) == (conc, length)
    assert a.lines and all(not line.startswith("# source") for line in a.lines)


def test_blocks_times_the_default_block_size_is_what_vllm_reports() -> None:
    """V0/early V1 print blocks; their own concurrency line says blocks x 16 tokens."""
    for name in ("vllm-0.7-v1-llama31-70b-w8a8.log", "vllm-0.6-v0-bamba-profile.log"):
        a = read_engine_log(read(name)).allocation
        assert a.kv_cache_blocks and a.max_concurrency and a.concurrency_tokens
        assert a.kv_cache_blocks * 16 / a.concurrency_tokens == pytest.approx(
            a.max_concurrency, abs=0.01
        )


def test_setup_vllm_v0_engine_config_line() -> None:
    s = read_engine_log(read("vllm-0.6-v0-llama31-8b-config.log")).setup
    assert s.engine == "vllm"
    assert s.model and s.model.endswith("0e9e39f249a16976918f6564b8830bc894c89659")
    assert (s.dtype, s.tensor_parallel, s.max_model_len) == ("bfloat16", 2, 8192)
    assert (s.kv_cache_dtype, s.enforce_eager, s.quantization) == (None, False, None)


def test_setup_vllm_v1_non_default_args_and_version() -> None:
    s = read_engine_log(read("vllm-0.24-v1-nondefault-args.log")).setup
    assert (s.engine, s.version, s.dtype, s.quantization) == (
        "vllm",
        "0.24.0",
        "bfloat16",
        "modelopt",
    )
    assert (s.max_model_len, s.kv_cache_dtype, s.max_num_seqs, s.max_num_batched_tokens) == (
        131072,
        "fp8",
        1,
        8192,
    )


def test_setup_from_the_command_line_above_the_log() -> None:
    s = read_engine_log(read("vllm-0.7-v1-llama31-70b-w8a8.log")).setup
    assert s.model == "neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
    assert (s.max_model_len, s.gpu_memory_utilization) == (2048, 0.98)
    s = read_engine_log(read("sglang-qwen3-235b-fp8-tp4.log")).setup
    assert (s.engine, s.model, s.tensor_parallel) == ("sglang", "/path/to/Qwen3-235B-A22B-FP8", 4)
    assert s.gpu_memory_utilization == 0.93  # --mem-fraction-static


def test_setup_sglang_server_args_and_llama_cpp_context() -> None:
    s = read_engine_log(read("sglang-qwen3-14b-tp4.log")).setup
    assert (s.engine, s.tensor_parallel, s.gpu_memory_utilization, s.dtype) == (
        "sglang",
        4,
        0.8,
        "bfloat16",
    )
    s = read_engine_log(read("llamacpp-8gpu-q4-cache.log")).setup
    assert (s.engine, s.max_model_len, s.max_num_seqs, s.max_num_batched_tokens) == (
        "llama.cpp",
        16384,
        8,
        256,
    )
    assert s.kv_cache_dtype == "q4_0"
    s = read_engine_log(read("llamacpp-b4701-small.log")).setup
    assert s.version == "b4701-be3bbd62"
    v0 = read_engine_log(read("vllm-0.6-v0-bamba-profile.log")).setup
    assert (v0.gpu_memory_utilization, v0.gpu_memory_gib) == (0.9, 79.15)


def test_odd_text_gives_nothing_and_never_raises() -> None:
    for text in ("", "\x00\xff" * 50, "gpu_memory_utilization=0.9.9.", "vllm serve '", "#" * 9000):
        parse_log_setup(text)
        parse_engine_log(text)
    assert parse_engine_log("Model loading took 1,2,3 GiB").weights_gib == 123.0


# ---- gpufit calibrate -----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_calibrate_names_the_model_precision_and_knobs_from_the_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = str(LOGS / "vllm-0.7-v1-llama31-70b-w8a8.log")
    code, out, err = run(capsys, "calibrate", log, "--gpu", "h100")
    assert code == 0, err
    assert "vllm, Llama-3.1-70B int8, TP 1 on h100-sxm" in out
    assert "gpu_memory_utilization=0.98, max_model_len=2048" in out
    assert "the shipped meta-llama/Llama-3.1-70B config" in out  # says so
    assert "weights per GPU" in out and "KV cache size" in out and "22,096 tokens" in out
    code, out, _ = run(capsys, "calibrate", log, "--gpu", "h100", "--json")
    (result,) = json.loads(out)
    figures = {f["name"]: f for f in result["figures"]}
    weights = figures["weights per GPU"]
    assert weights["log"] == 67.7229 and abs(weights["error"]) < 0.01  # the 1% target
    assert figures["KV cache size"]["log"] == 1381 * 16
    assert result["plan"]["name"] == "vllm" and result["precision"] == "int8"


def test_calibrate_without_a_card_compares_only_card_free_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = str(LOGS / "vllm-0.8-v1-qwen3-tp4.log")
    code, out, err = run(
        capsys, "calibrate", log, "--model", "qwen3-30b-a3b", "--tensor-parallel", "4"
    )
    assert code == 0, err
    assert "Qwen3-30B-A3B stored, TP 4" in out and "14.25 GiB" in out
    code, out, _ = run(
        capsys, "calibrate", str(LOGS / "vllm-v1-kv-fp8.log"), "--model", "llama-3.1-8b"
    )
    assert "KV bytes per token per GPU" in out
    assert "not compared: KV cache size: depends on the card; give --gpu CARD" in out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("hello\nworld\n", (), "no vLLM, SGLang or llama.cpp allocation lines recognised"),
        ("", (), "no vLLM, SGLang or llama.cpp allocation lines recognised"),
        ("Model loading took 7.5 GiB\n", (), "the log names no model; give --model"),
        ("vllm serve org/NoSuchModel-7B\nModel loading took 7.5 GiB\n", (), "is not a shipped id"),
        ("Model loading took 7.5 GiB\n", ("--model", "qwen3-0.6b", "--gpu", "nope"), "unknown GPU"),
        ("Model loading took 7.5 GiB\n", ("--model", "qwen3-0.6b", "--gpu", " "), "set but empty"),
        (
            "Model loading took 7.5 GiB\n",
            ("--model", "qwen3-0.6b", "--gpu", "h100,t4"),
            "one setup",
        ),
        ("Model loading took 7.5 GiB\n", ("--model", "qwen3-0.6b", "--dtype", "fp9"), "fp9"),
        ("Model loading took 7.5 GiB\n", ("--model", ""), "--model: set but empty"),
        (
            "vllm serve qwen3-0.6b --gpu-memory-utilization 1.5\nModel loading took 7.5 GiB\n",
            (),
            "the log's setup: --gpu-memory-utilization must be a fraction",
        ),
        (
            "Model loading took 7.5 GiB\n",
            ("--model", "llama-3.1-8b", "--tensor-parallel", "3"),
            "do not divide the 32 attention heads",
        ),
    ],
)
def test_calibrate_bad_input_is_one_message(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str,
    extra: tuple[str, ...],
    message: str,
) -> None:
    log = tmp_path / "server.log"
    log.write_text(content)
    code, out, err = run(capsys, "calibrate", str(log), *extra)
    assert code == 2 and out == ""
    assert err.startswith("gpufit: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_calibrate_missing_file_folder_and_binary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "calibrate", str(tmp_path / "none.log"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "calibrate", str(tmp_path))
    assert code == 2 and "a folder" in err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 100)
    code, _, err = run(capsys, "calibrate", str(junk))
    assert code == 2 and "no vLLM, SGLang or llama.cpp" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate"])
    assert exit_info.value.code == 2
    code, _, err = run(capsys, "calibrate", "/dev/zero")  # a pipe or device must not fill memory
    assert code == 2 and "more than 64 MiB" in err


def test_calibrate_overrides_and_what_they_replace(capsys: pytest.CaptureFixture[str]) -> None:
    log = str(LOGS / "sglang-qwen3-14b-tp4.log")
    code, out, _ = run(capsys, "calibrate", log, "--model", "qwen3-32b", "--tensor-parallel", "2")
    assert code == 0 and "TP 2" in out
    assert "note: the log says tensor parallel 4; --tensor-parallel 2 used" in out
    code, out, _ = run(capsys, "calibrate", log, "--model", "qwen3-32b", "--gpu", "2*rtx-4090")
    assert code == 0 and "TP 4" in out  # the --gpu count only fills in what the log omits


def test_tensor_parallel_from_the_ranks_that_logged(capsys: pytest.CaptureFixture[str]) -> None:
    """vLLM 0.8 prints one "Model loading took" per rank and no TP size: four ranks, TP 4."""
    assert read_engine_log(read("vllm-0.8-v1-qwen3-tp4.log")).setup.ranks_seen == 4
    code, out, _ = run(
        capsys, "calibrate", str(LOGS / "vllm-0.8-v1-qwen3-tp4.log"), "--model", "qwen3-30b-a3b"
    )
    assert code == 0 and "TP 4" in out and "the ranks that logged" in out


# ---- attacks on the log reader (h/attack-fit) -------------------------------------------------

HUGE = "9" * 5000  # past Python's 4,300-digit limit for int(str)


@pytest.mark.parametrize(
    "text",
    [
        f"INFO Using max model len {HUGE}\nModel loading took 14.99 GiB memory\n",
        f"vllm serve meta-llama/Llama-3.1-8B --max-model-len {HUGE}\n"
        "Model loading took 14.99 GiB memory\n",
        f"llama-server -m x.gguf\nllama_context: n_ctx = {HUGE}\n"
        "load_tensors: CUDA0 model buffer size = 100.0 MiB\n",
        f"Model loading took {HUGE}.5 GiB memory\nINFO GPU KV cache size: {HUGE} tokens\n",
        f"INFO # GPU blocks: {HUGE}\nMaximum concurrency for {HUGE} tokens per request: 2.0x\n",
    ],
)
def test_a_number_too_long_to_convert_never_raises(text: str) -> None:
    """int('9' * 5000) is a ValueError and int(float('9' * 5000)) an OverflowError: the reader
    must skip such a figure, not raise (calibrate and the serves check read the same text)."""
    read_engine_log(text)


def test_calibrate_a_log_with_a_number_too_long_is_one_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    log.write_text(f"vllm serve meta-llama/Llama-3.1-8B\nINFO GPU KV cache size: {HUGE} tokens\n")
    code, out, err = run(capsys, "calibrate", str(log), "--gpu", "h100")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "no vLLM, SGLang or llama.cpp allocation lines recognised" in err


def test_calibrate_json_stays_strict_json_when_the_log_says_zero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A figure the log gives as 0 has no relative error: null in JSON (never ``Infinity``,
    which strict JSON readers refuse) and 'n/a' in the text."""
    log = tmp_path / "server.log"
    log.write_text(
        "vllm serve meta-llama/Llama-3.1-8B --dtype bfloat16\n"
        "INFO Model loading took 0.00 GiB memory\nINFO GPU KV cache size: 0 tokens\n"
    )
    code, out, err = run(capsys, "calibrate", str(log), "--gpu", "h100", "--json")
    assert code == 0, err
    (result,) = json.loads(out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert [f["error"] for f in result["figures"]] == [None, None]
    code, out, _ = run(capsys, "calibrate", str(log), "--gpu", "h100")
    assert "inf" not in out and "n/a" in out


def test_calibrate_plans_with_the_moe_backend_the_log_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """vLLM 0.14 on an H100 logs 'Using Triton backend' for gpt-oss's MXFP4 experts; Triton
    pads them less than Marlin, which was always assumed (+2.3% on this log)."""
    log = read_engine_log(read("vllm-0.14-gpt-oss-120b-triton.log"))
    assert log.setup.moe_backend == "triton"
    assert log.setup.model == "openai/gpt-oss-120b"  # "Starting to load model ..."
    path = str(LOGS / "vllm-0.14-gpt-oss-120b-triton.log")
    assert main(["calibrate", path, "--gpu", "h100", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["knobs"]["moe_backend"] == "triton"
    weights = next(f for f in result["figures"] if f["name"] == "weights per GPU")
    assert abs(weights["error"]) < 0.005  # -0.35%; Marlin's padding gave +2.3%
    assert result["plan"]["moe_backend"] == "triton"
    # Without the card, Triton's weights are not compared: its layout depends on the GPU.
    assert main(["calibrate", path, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["figures"] == []
    assert result["not_compared"] == ["weights per GPU: depends on the card; give --gpu CARD"]


@pytest.mark.parametrize(
    ("line", "backend"),
    [
        ("INFO [mxfp4.py:165] Using Marlin backend", "marlin"),
        ("INFO [mxfp4.py:53] [get_mxfp4_backend_with_lora] Using Triton backend", "triton"),
        ("INFO Using FlashInfer MXFP4 BF16 backend for SM90", "flashinfer-cutlass"),
        ("INFO Using FlashInfer MXFP4 MXFP8 CUTLASS backend for SM100", "flashinfer-cutlass"),
        ("INFO Using FlashInfer MXFP4 BF16 backend for SM100, For faster ...", "flashinfer-trtllm"),
        ("INFO [cuda.py:351] Using FLASH_ATTN attention backend out of ...", None),
        ("INFO Using FlashInfer backend.", None),
    ],
)
def test_the_moe_backend_line(line: str, backend: str | None) -> None:
    assert parse_log_setup("vllm serve m\n" + line).moe_backend == backend
