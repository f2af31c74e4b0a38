"""Truncated or lying safetensors files, written by hand (8-byte little-endian length + JSON):
each is one error naming the file and what is wrong, never an estimate that "fits"."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpufit.cli import main
from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.safetensors_header import checkpoint_info, read_tensors
from pytest_gpufit.fit.spec import load_spec

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 256,
    "torch_dtype": "bfloat16",
}
GOOD: dict[str, Any] = {
    "a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
    "b": {"dtype": "BF16", "shape": [8], "data_offsets": [64, 80]},
}


def blob(header: Any, data: int | bytes = 80, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = data if isinstance(data, bytes) else b"\0" * data
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def with_tensor(name: str, **entry: Any) -> dict[str, Any]:
    return {**GOOD, name: {**GOOD.get(name, {}), **entry}}


# (file contents, what the message says)
BAD_FILES = [
    (b"\x01\x02", "2 bytes: too short for a safetensors file"),
    (blob(GOOD, length=10_000), "header length says 10,000 bytes, file has "),
    (blob(GOOD, length=2**40), "not a safetensors file (header length 1,099,511,627,776 bytes"),
    (blob(b"{not json"), "safetensors header is not valid JSON: Expecting property name"),
    (blob(b"\xff\xfe"), "safetensors header is not UTF-8 text"),
    (blob([1, 2]), "safetensors header must be a JSON object"),
    (
        blob({"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4_194_304]}}, 1000),
        "header says 4,194,304 bytes of tensor data, file has 1,000 (truncated?)",
    ),
    (
        blob(with_tensor("b", shape=[68], data_offsets=[64, 200])),
        "header says 200 bytes of tensor data, file has 80",
    ),
    (
        blob(with_tensor("b", dtype="F32", shape=[4, 4], data_offsets=[32, 96]), 96),
        "tensors 'a' (bytes 0-64) and 'b' (bytes 32-96) overlap",
    ),
    (
        blob(with_tensor("b", data_offsets=[72, 88]), 88),
        "bytes 64-72 of the tensor data belong to no tensor in the header",
    ),
    (
        blob(with_tensor("a", data_offsets=[-16, 64])),
        "tensor 'a': data_offsets must be [start, end]",
    ),
    (blob(with_tensor("a", data_offsets=[64, 0])), "tensor 'a': data_offsets must be [start, end]"),
    (blob(with_tensor("a", data_offsets=[0, 64, 3])), "tensor 'a': data_offsets must be [start, "),
    (
        blob(with_tensor("a", dtype="F7")),
        "tensor 'a': unknown dtype 'F7'; safetensors dtypes: BOOL",
    ),
    (
        blob(with_tensor("a", shape=[4, 2])),
        "tensor 'a': shape [4, 2] in F32 is 32 bytes, but data_offsets span 64 bytes",
    ),
    (blob(with_tensor("a", shape=[-4, -4])), "tensor 'a': shape must be a list of whole numbers"),
    (blob(with_tensor("a", shape="4x4")), "tensor 'a': shape must be a list of whole numbers"),
    (
        blob({**GOOD, "c": {"shape": [0], "data_offsets": [0, 0]}}),
        "tensor 'c': expected an object with dtype, shape and data_offsets",
    ),
    (blob(GOOD, 100), "file has 100 bytes of tensor data, header accounts for 80"),
    (blob({**GOOD, "__metadata__": {"format": 1}}), "__metadata__ must map names to strings"),
    (
        blob({"q": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, 2),
        "tensor 'q': shape [3] in F4 is 12 bits (not whole bytes), but data_offsets span 2 bytes",
    ),
]
GOOD_FILES = [
    blob(GOOD),
    blob({"b": GOOD["b"], "a": GOOD["a"], "__metadata__": {"format": "pt"}}),  # any order
    blob({**GOOD, "z": {"dtype": "F16", "shape": [0, 8], "data_offsets": [80, 80]}}),
    blob({"q": {"dtype": "F4", "shape": [8], "data_offsets": [0, 4]}}, 4),
    blob({}, 0),
]


def model_folder(folder: Path, contents: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "model-00001.safetensors").write_bytes(contents)
    return folder


@pytest.mark.parametrize(("contents", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_a_bad_file_is_one_error_naming_it(tmp_path: Path, contents: bytes, message: str) -> None:
    folder = model_folder(tmp_path / "m", contents)
    with pytest.raises(GpufitError) as error:
        checkpoint_info(folder)
    assert str(error.value).startswith(f"{folder / 'model-00001.safetensors'}: ")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "contents", GOOD_FILES, ids=["plain", "any-order", "empty-tensor", "f4", "no-tensors"]
)
def test_valid_files_are_read(tmp_path: Path, contents: bytes) -> None:
    assert checkpoint_info(model_folder(tmp_path / "m", contents)) is not None


def test_we_refuse_what_the_safetensors_loader_refuses() -> None:
    safetensors = pytest.importorskip("safetensors")
    for contents, _message in BAD_FILES:
        with pytest.raises(Exception):  # noqa: B017 - the loader's own error types vary
            safetensors.deserialize(contents)
    for contents in GOOD_FILES:
        safetensors.deserialize(contents)


def test_gpufit_fit_on_a_truncated_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = model_folder(tmp_path / "m", BAD_FILES[6][0])
    assert main(["fit", str(folder), "--gpu", "h100-sxm"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gpufit: error: {folder / 'model-00001.safetensors'}: header says 4,194,304 bytes of "
        "tensor data, file has 1,000 (truncated?)\n"
    )


def test_a_file_truncated_after_a_first_read_is_not_served_from_cache(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m", blob(GOOD))
    assert load_spec(folder).checkpoint is not None
    (folder / "model-00001.safetensors").write_bytes(blob(GOOD)[:-10])
    with pytest.raises(GpufitError, match="header says 80 bytes of tensor data, file has 70"):
        load_spec(folder)


def test_suite_fits_check_fails_on_a_truncated_checkpoint(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GPUFIT_SIMULATE", "GPUFIT_ON_MISSING", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    folder = model_folder(pytester.path / "m", BAD_FILES[6][0])
    pytester.makefile(
        ".gpufit.yaml",
        cut=f"""
suite: cut
targets:
  - name: cut
    model: {folder}
    dtype: bf16
    device: cpu
    checks:
      fits: {{}}
""",
    )
    result = pytester.runpytest("-rfE")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("skipped", 0) == 0
    result.stdout.fnmatch_lines(
        ["*model-00001.safetensors: header says 4,194,304 bytes of tensor data, file has 1,000*"]
    )
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()


TENSORS = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "BF16", "U8", "F4", "F8_E4M3", "F7"]),
            "shape": st.lists(st.integers(min_value=-1, max_value=4), max_size=2),
            "data_offsets": st.lists(
                st.integers(min_value=-1, max_value=40), min_size=2, max_size=2
            ),
        }
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(header=TENSORS, data=st.integers(min_value=0, max_value=48))
def test_we_agree_with_the_safetensors_loader(header: dict[str, Any], data: int) -> None:
    safetensors = pytest.importorskip("safetensors")
    contents = blob(header, data)
    try:
        safetensors.deserialize(contents)
        loader_accepts = True
    except Exception:
        loader_accepts = False
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        path.write_bytes(contents)
        try:
            read_tensors(path)
            we_accept = True
        except GpufitError:
            we_accept = False
    assert we_accept == loader_accepts
