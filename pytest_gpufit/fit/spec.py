"""``ModelSpec``: what a Hugging Face ``config.json`` (and safetensors headers) say of a model.

Parameter counts are computed per role (embedding, attention, experts...) so that a precision
can apply to the roles a quantizer really converts, and so that MoE active parameters follow.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.safetensors_header import CheckpointInfo, checkpoint_info

GENERIC_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)
KNOWN_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
}
_TORCH_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "half": "fp16",
    "float": "fp32",
}


@dataclass(frozen=True)
class Params:
    """Parameter counts by role. ``experts`` are all routed experts; ``mtp`` is not loaded."""

    embedding: int = 0
    lm_head: int = 0  # 0 when tied to the embedding
    attention: int = 0
    dense_mlp: int = 0
    experts: int = 0
    experts_active: int = 0
    shared_experts: int = 0
    router: int = 0
    norms: int = 0
    mtp: int = 0
    tied: bool = False

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.lm_head
            + self.attention
            + self.dense_mlp
            + self.experts
            + self.shared_experts
            + self.router
            + self.norms
        )

    @property
    def active(self) -> int:
        """Per token, counting the embedding table (the Qwen, Mixtral, DeepSeek convention)."""
        return self.total - self.experts + self.experts_active

    @property
    def active_compute(self) -> int:
        """Per token, without the input embedding lookup (gpt-oss's convention): the weights a
        decode step reads."""
        return self.active - (0 if self.tied else self.embedding)

    @property
    def linear(self) -> int:
        """Weights of the decoder layers' linear projections: what quantizers convert."""
        return self.attention + self.dense_mlp + self.experts + self.shared_experts


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's ``quantization_config``: its format and which roles it covers."""

    method: str
    dtype: str  # fp8 | mxfp4 | int4 | int8 ...
    roles: tuple[str, ...]  # Params fields stored in that format
    group_size: int | None = None


@dataclass(frozen=True)
class KvLayout:
    """Cache elements per token per layer, and how many layers keep all tokens vs a window."""

    elements_per_token_layer: int
    full_layers: int
    sliding_layers: int = 0
    window: int | None = None
    kind: str = "gqa"  # gqa | mla (compressed latent, as vLLM and SGLang cache it)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # per token through the MLP: dense, or active experts + shared
    max_position_embeddings: int | None
    stored_dtype: str
    params: Params
    kv: KvLayout
    quantization: Quantization | None = None
    checkpoint: CheckpointInfo | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def is_moe(self) -> bool:
        return self.params.experts > 0


# ---- reading ----------------------------------------------------------------------------


def shipped_models() -> dict[str, Path]:
    """Shipped real configs by id: ``qwen3-30b-a3b`` and ``Qwen/Qwen3-30B-A3B`` both work."""
    folder = resources.files("pytest_gpufit.fit").joinpath("models")
    out: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json") and "__" in entry.name:
            org, _, name = entry.name.removesuffix(".json").partition("__")
            out[name.lower()] = Path(str(entry))
            out[f"{org}/{name}".lower()] = Path(str(entry))
    return out


def resolve_model(model: str, base: Path | None = None) -> Path:
    """A folder, a config.json, or a shipped id; relative paths resolve against ``base``."""
    candidate = Path(model).expanduser()
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    if candidate.exists():
        return candidate
    shipped = shipped_models()
    key = model.lower().removesuffix(".json")
    if key in shipped:
        return shipped[key]
    ids = sorted(k for k in shipped if "/" not in k)
    raise GpufitError(
        f"model {model!r}: no such file or folder ({candidate}), and not a shipped "
        f"model id ({', '.join(ids)})"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise GpufitError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise GpufitError(
            f"{path}:{error.lineno}:{error.colno}: malformed JSON: {error.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise GpufitError(f"{path}: unreadable: {error}") from None
    if not isinstance(data, dict):
        raise GpufitError(f"{path}: a config.json must be a JSON object")
    return data


def load_spec(model: str | Path, base: Path | None = None) -> ModelSpec:
    """Read a model folder or config.json into a ``ModelSpec`` (cached per file and mtime)."""
    path = resolve_model(str(model), base)
    config_path = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not config_path.exists():
        raise GpufitError(f"{path}: a model folder needs a config.json")
    stamp = config_path.stat().st_mtime_ns if config_path.exists() else 0
    return _load_spec(str(path), stamp)


@functools.lru_cache(maxsize=64)
def _load_spec(path_text: str, _stamp: int) -> ModelSpec:
    path = Path(path_text)
    config_path = path / "config.json" if path.is_dir() else path
    config = _read_json(config_path)
    checkpoint = checkpoint_info(path) if path.is_dir() else None
    name = path.name if path.is_dir() else config_path.stem.partition("__")[2] or path.parent.name
    return spec_from_config(config, name=name, path=str(path), checkpoint=checkpoint)


def _int(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GpufitError(f"{where}: field {key!r} must be a positive integer, got {value!r}")
    return value


def spec_from_config(
    raw: dict[str, Any],
    name: str = "model",
    path: str = "config.json",
    checkpoint: CheckpointInfo | None = None,
) -> ModelSpec:
    """Compute a ``ModelSpec`` from a config dict."""
    config = dict(raw.get("text_config") or raw)
    warnings: list[str] = []
    if "text_config" in raw:
        warnings.append("multimodal config: only the language model (text_config) is counted")
    model_type = str(config.get("model_type") or raw.get("model_type") or "unknown")
    if model_type not in KNOWN_TYPES:
        missing = [f for f in GENERIC_FIELDS if f not in config]
        if missing:
            raise GpufitError(
                f"{path}: unknown model_type {model_type!r} and the generic fields "
                f"{', '.join(missing)} are missing; cannot estimate"
            )
        warnings.append(
            f"unknown model_type {model_type!r}: estimated as a dense decoder from "
            f"{', '.join(GENERIC_FIELDS)} (GQA, gated MLP, untied embeddings unless "
            "tie_word_embeddings says otherwise)"
        )
    h = _int(config, "hidden_size", path)
    layers = _int(config, "num_hidden_layers", path)
    vocab = _int(config, "vocab_size", path)
    heads = _int(config, "num_attention_heads", path)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    dense_i = int(config.get("intermediate_size") or 0)

    tied = bool(config.get("tie_word_embeddings", model_type.startswith("gemma")))
    embedding = vocab * h
    lm_head = 0 if tied else vocab * h

    attention_layer, kv, mla_norms = _attention(
        config, model_type, h, heads, kv_heads, head_dim, layers
    )
    moe = _moe(config, model_type, h, layers, dense_i)
    norms = layers * 2 * h + h + layers * mla_norms
    if model_type in ("qwen3", "qwen3_moe") or model_type.startswith("gemma3"):
        norms += layers * 2 * head_dim  # q_norm, k_norm
    if model_type.startswith("gemma2") or model_type.startswith("gemma3"):
        norms += layers * 2 * h  # pre/post feed-forward norms

    mtp = 0
    n_mtp = int(config.get("num_nextn_predict_layers") or 0)
    if n_mtp:
        per_moe_layer = (moe["experts"] + moe["shared"] + moe["router"]) // max(
            moe["moe_layers"], 1
        )
        mtp = n_mtp * (attention_layer + per_moe_layer + 2 * h * h + 4 * h)
        warnings.append(
            f"{n_mtp} multi-token-prediction layer(s) ({mtp / 1e9:.1f}B) not counted: "
            "engines load them only for speculative decoding"
        )

    params = Params(
        embedding=embedding,
        lm_head=lm_head,
        attention=layers * attention_layer,
        dense_mlp=moe["dense"],
        experts=moe["experts"],
        experts_active=moe["experts_active"],
        shared_experts=moe["shared"],
        router=moe["router"],
        norms=norms,
        mtp=mtp,
        tied=tied,
    )

    dtype_name = config.get("torch_dtype") or config.get("dtype") or raw.get("torch_dtype")
    if dtype_name is None:
        warnings.append("config names no torch_dtype; bfloat16 assumed")
    stored = _TORCH_DTYPES.get(str(dtype_name or "bfloat16"), "bf16")

    return ModelSpec(
        name=name,
        path=path,
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=moe["active_intermediate"],
        max_position_embeddings=config.get("max_position_embeddings"),
        stored_dtype=stored,
        params=params,
        kv=kv,
        quantization=_quantization(config, path, warnings),
        checkpoint=checkpoint,
        warnings=tuple(warnings),
    )


def _attention(
    config: dict[str, Any],
    model_type: str,
    h: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    layers: int,
) -> tuple[int, KvLayout, int]:
    """Attention parameters per layer, the KV layout, and MLA's extra norm parameters."""
    if config.get("kv_lora_rank"):
        kv_rank = int(config["kv_lora_rank"])
        rope = int(config["qk_rope_head_dim"])
        nope = int(config["qk_nope_head_dim"])
        v_dim = int(config.get("v_head_dim") or nope)
        q_rank = config.get("q_lora_rank")
        q = (h * q_rank + q_rank * heads * (nope + rope)) if q_rank else h * heads * (nope + rope)
        per_layer = q + h * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * h
        norms = (int(q_rank) if q_rank else 0) + kv_rank
        return per_layer, KvLayout(kv_rank + rope, layers, kind="mla"), norms
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    per_layer = h * q_out + 2 * h * kv_out + q_out * h
    if config.get("attention_bias"):
        per_layer += q_out + 2 * kv_out + h
    elif model_type in ("qwen2", "qwen2_moe"):
        per_layer += q_out + 2 * kv_out  # Qwen2 has q/k/v biases without the flag
    if model_type == "gpt_oss":
        per_layer += heads  # attention sinks
    return per_layer, _kv_layout(config, model_type, layers, 2 * kv_out), 0


def _kv_layout(config: dict[str, Any], model_type: str, layers: int, elements: int) -> KvLayout:
    window = config.get("sliding_window")
    types = config.get("layer_types")
    if isinstance(types, list) and window:
        sliding = sum(1 for t in types if t == "sliding_attention")
        return KvLayout(elements, layers - sliding, sliding, int(window))
    if not window or config.get("use_sliding_window") is False:
        return KvLayout(elements, layers)
    if model_type == "gemma2":
        sliding = layers // 2  # alternating local/global layers
    elif model_type.startswith("gemma3"):
        pattern = int(config.get("sliding_window_pattern") or 6)
        sliding = layers - layers // pattern
    else:
        sliding = layers  # Mistral-style: every layer slides
    return KvLayout(elements, layers - sliding, sliding, int(window))


def _moe(
    config: dict[str, Any], model_type: str, h: int, layers: int, dense_i: int
) -> dict[str, int]:
    experts = int(
        config.get("num_experts")
        or config.get("num_local_experts")
        or config.get("n_routed_experts")
        or 0
    )
    if not experts:
        return {
            "dense": layers * 3 * h * dense_i,
            "experts": 0,
            "experts_active": 0,
            "shared": 0,
            "router": 0,
            "moe_layers": 0,
            "active_intermediate": dense_i,
        }
    top_k = int(config.get("num_experts_per_tok") or config.get("experts_per_token") or 1)
    expert_i = int(config.get("moe_intermediate_size") or dense_i)
    per_expert = 3 * h * expert_i
    router_per_layer = h * experts
    if model_type == "gpt_oss":
        per_expert += 2 * expert_i + h  # gate_up and down biases
        router_per_layer += experts
    shared_i = int(config.get("n_shared_experts") or 0) * expert_i
    if config.get("shared_expert_intermediate_size"):
        shared_i = int(config["shared_expert_intermediate_size"])
        router_per_layer += h  # Qwen2-MoE's shared-expert gate
    moe_layers = [i for i in range(layers) if _is_moe_layer(config, i)]
    n_moe, n_dense = len(moe_layers), layers - len(moe_layers)
    return {
        "dense": n_dense * 3 * h * dense_i,
        "experts": n_moe * experts * per_expert,
        "experts_active": n_moe * top_k * per_expert,
        "shared": n_moe * 3 * h * shared_i,
        "router": n_moe * router_per_layer,
        "moe_layers": n_moe,
        "active_intermediate": top_k * expert_i + shared_i,
    }


def _is_moe_layer(config: dict[str, Any], i: int) -> bool:
    if i < int(config.get("first_k_dense_replace") or 0):
        return False
    if i in (config.get("mlp_only_layers") or []):
        return False
    step = int(config.get("decoder_sparse_step") or config.get("moe_layer_freq") or 1)
    return (i + 1) % step == 0 if "decoder_sparse_step" in config else i % step == 0


_LINEAR = ("attention", "dense_mlp", "experts", "shared_experts")


def _quantization(config: dict[str, Any], path: str, warnings: list[str]) -> Quantization | None:
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        block = q.get("weight_block_size") or [128, 128]
        return Quantization("fp8", "fp8", _LINEAR, int(block[0]) * int(block[1]))
    if method == "mxfp4":
        skipped = " ".join(q.get("modules_to_not_convert") or [])
        roles = ("experts",) if "self_attn" in skipped else ("attention", "experts")
        return Quantization("mxfp4", "mxfp4", roles, 32)
    if method in ("awq", "gptq"):
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        group = int(q.get("group_size") or q.get("q_group_size") or 128)
        if bits not in (4, 8):
            raise GpufitError(
                f"{path}: quantization_config: {bits}-bit {method} is not supported; 4 and 8 are"
            )
        return Quantization(method, f"int{bits}", _LINEAR, group if group > 0 else None)
    warnings.append(
        f"quantization_config quant_method {method!r} is not modelled; "
        "weights are estimated as stored at torch_dtype"
    )
    return None
