"""The transformers backend: safetensors checkpoints or random weights, on the asked device.

Offline by construction: every ``from_pretrained`` call passes ``local_files_only=True``, so no
hub access is attempted, and the process environment (``HF_HUB_OFFLINE``) is left as it was.
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.measure import device_sync

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OutOfMemory = torch.cuda.OutOfMemoryError


class TransformersModel:
    """A loaded causal LM; see ``pytest_gpufit.backends.Loaded``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        dtype: str,
        load_seconds: float,
        peak: int | None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.load_seconds = load_seconds
        self.peak_allocated_bytes = peak
        self.wrong_dtype_parameters = _wrong_dtype(model, TORCH_DTYPES[dtype])
        self.sync = device_sync(device)
        # transformers 5.x renames past_key_values to cache; accept either.
        forward = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"

    def generate(
        self, input_ids: torch.Tensor, new_tokens: int
    ) -> tuple[torch.Tensor, float, float]:
        ids = input_ids.to(self.device)
        with torch.inference_mode():
            self.sync()
            start = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
            self.sync()
            first = time.perf_counter()
            past, tokens = _cache_of(out), [token]
            for _ in range(new_tokens - 1):  # forced length: no stop at EOS
                out = self.model(input_ids=token, use_cache=True, **{self.cache_arg: past})
                past = _cache_of(out)
                token = out.logits[:, -1, :].argmax(-1, keepdim=True)
                tokens.append(token)
            self.sync()
            end = time.perf_counter()
        return torch.cat(tokens, dim=1).cpu(), first - start, end - first

    def greedy_topk(self, input_ids: torch.Tensor, new_tokens: int, k: int) -> dict[str, Any]:
        """Greedy tokens with the top-k token ids and log-probabilities at each step."""
        ids = input_ids.to(self.device)
        tokens: list[int] = []
        top_ids: list[list[int]] = []
        top_logprobs: list[list[float]] = []
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            for step in range(new_tokens):
                logprobs = torch.log_softmax(out.logits[0, -1, :].float(), dim=-1)
                values, indices = torch.topk(logprobs, k)
                token = int(indices[0])
                tokens.append(token)
                top_ids.append([int(i) for i in indices])
                top_logprobs.append([round(float(v), 6) for v in values])
                if step + 1 < new_tokens:
                    nxt = torch.tensor([[token]], device=self.device)
                    out = self.model(
                        input_ids=nxt, use_cache=True, **{self.cache_arg: _cache_of(out)}
                    )
        return {"tokens": tokens, "top_ids": top_ids, "top_logprobs": top_logprobs}

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits: torch.Tensor = self.model(input_ids=input_ids.to(self.device)).logits
            return logits.float()

    def reference_fp32(self) -> TransformersModel:
        reference = copy.deepcopy(self.model).to(torch.float32)
        return TransformersModel(reference, self.tokenizer, self.device, "fp32", 0.0, None)

    def free_bytes(self) -> int | None:
        """Free device memory now (None on the CPU, where the OS decides)."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.mem_get_info(self.device)[0])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def unload(self) -> None:
        self.model = None
        free_device(self.device)


def _cache_of(out: Any) -> Any:
    return out.cache if hasattr(out, "cache") else out.past_key_values


def _wrong_dtype(model: Any, want: torch.dtype) -> tuple[str, ...]:
    """Floating parameters not in the asked dtype, except those the model keeps in fp32."""
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    keep += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    wrong = []
    for name, param in model.named_parameters():
        kept = any(k in name for k in keep)
        if param.is_floating_point() and param.dtype != want and not kept:
            wrong.append(f"{name} ({str(param.dtype).removeprefix('torch.')})")
    return tuple(wrong)


def free_device(device: torch.device | str) -> None:
    """Drop cached blocks so the next model or test finds the memory free."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _tokenizer(folder: Path | None, trust: bool) -> Any:
    if folder is None or not any(
        (folder / f).exists()
        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ):
        return None
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust)


def _check_torch_can_use_cuda(device: torch.device) -> None:
    """NVML may see a card that torch cannot use: say which torch and why, not a traceback."""
    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        raise GpufitError(
            f"{device}: torch {torch.__version__} is a CPU build and cannot use the GPU the "
            "probe found; install the CUDA build (on Linux, `pip install torch==VERSION` from "
            'PyPI; docs/ci.md, "What the gate installs")'
        )
    raise GpufitError(
        f"{device}: torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use a GPU "
        "here (torch.cuda.is_available() is False): an NVIDIA driver older than CUDA "
        f"{torch.version.cuda} needs, or CUDA_VISIBLE_DEVICES hiding the card; `gpufit probe` "
        "shows the driver"
    )


def load(
    model_path: Path, weights: str, dtype: str, device: str, trust_remote_code: bool, seed: int = 0
) -> TransformersModel:
    """Load onto ``device`` at ``dtype``; random weights are built on the device directly."""
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        _check_torch_can_use_cuda(torch_device)
    torch_dtype = TORCH_DTYPES[dtype]
    folder = model_path if model_path.is_dir() else None
    sync = device_sync(torch_device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    sync()
    start = time.perf_counter()
    try:
        if weights == "random":
            config = _config(model_path, trust_remote_code)
            torch.manual_seed(seed)
            with torch_device:  # construct on the device, not on the CPU first
                model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                    config, dtype=torch_dtype, trust_remote_code=trust_remote_code
                )
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_path,
                dtype=torch_dtype,
                device_map=torch_device,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
            )
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise GpufitError(
                f"{model_path}: this model needs the custom code in its folder; set "
                "trust_remote_code: true on the target (only for code you trust)"
            ) from None
        raise GpufitError(f"{model_path}: transformers could not load it: {error}") from None
    except OSError as error:
        raise GpufitError(f"{model_path}: a file is missing or unreadable: {error}") from None
    model.eval()
    sync()
    seconds = time.perf_counter() - start
    peak = (
        int(torch.cuda.max_memory_allocated(torch_device)) if torch_device.type == "cuda" else None
    )
    return TransformersModel(
        model, _tokenizer(folder, trust_remote_code), torch_device, dtype, seconds, peak
    )


def _config(model_path: Path, trust: bool) -> Any:
    if model_path.is_dir():
        return AutoConfig.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=trust
        )
    data = json.loads(model_path.read_text("utf-8"))
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise GpufitError(f"{model_path}: config has no model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as error:
        raise GpufitError(
            f"{model_path}: transformers {transformers.__version__} does not know "
            f"model_type {model_type!r}: {error}"
        ) from None


def random_prompt(vocab_size: int, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids for prompts given as a count."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, tokens), generator=generator)


def prompt_ids(
    loaded: TransformersModel, text: str | None, batch: int, tokens: int, seed: int
) -> torch.Tensor:
    """The prompt as a ``(batch, length)`` tensor: ``text`` encoded, or ``tokens`` random ids."""
    if text is not None:
        if loaded.tokenizer is None:
            raise GpufitError("a text prompt needs a tokenizer in the model folder")
        return torch.tensor([loaded.encode(text)] * batch)
    return random_prompt(vocab_size(loaded), batch, tokens, seed)


def vocab_size(loaded: TransformersModel) -> int:
    return int(loaded.model.config.get_text_config().vocab_size)


def kl_and_top1(reference: torch.Tensor, test: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || test) over positions, and the share of positions whose top-1 agree."""
    ref = torch.log_softmax(reference.float(), dim=-1)
    tst = torch.log_softmax(test.float(), dim=-1)
    kl = torch.sum(ref.exp() * (ref - tst), dim=-1).mean().item()
    top1 = (ref.argmax(-1) == tst.argmax(-1)).float().mean().item()
    return float(kl), float(top1)
