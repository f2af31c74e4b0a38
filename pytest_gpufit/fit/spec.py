"""``ModelSpec``: what a Hugging Face ``config.json`` (and safetensors headers) say of a model.

Parameter counts are computed per role (embedding, attention, experts...) so that a precision
can apply to the roles a quantizer really converts, and so that MoE active parameters follow.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_gpufit.errors import GpufitError
from pytest_gpufit.fit.config_fields import MAXIMA, ConfigFields
from pytest_gpufit.fit.names import variant
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
    "minimax_m2",  # GQA and routed experts whose size is intermediate_size, read as such
}
# vLLM's _get_and_verify_max_len: rope types whose factor is already part of
# max_position_embeddings (``su`` is longrope's old name).
ROPE_UNSCALED = ("su", "longrope", "llama3")
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
    # Parts of ``attention`` that tensor parallelism does not split evenly: the GQA k/v
    # projections (one KV head per rank at least, so replicated when TP > KV heads) and MLA's
    # latent down-projections (q_a, kv_a: ReplicatedLinear in vLLM and SGLang, whole per rank).
    attention_kv: int = 0
    attention_replicated: int = 0

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
    # (role, parameters) the checkpoint keeps in its float format although the role is
    # quantized: its ignore list / modules_to_not_convert, counted module by module.
    unquantized: tuple[tuple[str, int], ...] = ()
    ignore: tuple[str, ...] = ()  # the ignore list as written (names, globs, re: patterns)


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
    experts_per_token: int = 0  # top_k of an MoE model, 0 for a dense one
    expert_intermediate_size: int = 0  # I of one routed expert
    rotary_dim: int = 0  # width of the rotary cos/sin table per position (engines cache it)
    # max_position_embeddings as config.json writes it, where rope scaling (its own
    # rope_scaling, or one given as the engines take it) moved the maximum; None: not moved.
    configured_max_position_embeddings: int | None = None

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
    try:
        candidate = Path(model).expanduser()
        if not candidate.is_absolute() and base is not None:
            candidate = base / candidate
        if candidate.exists():
            return candidate
    except (OSError, RuntimeError) as error:  # a name too long, ~nosuchuser
        raise GpufitError(f"model {model[:80]!r}: not a usable path: {error}") from None
    shipped = shipped_models()
    key = model.lower().removesuffix(".json")
    if key in shipped:
        return shipped[key]
    same = variant(model)  # an instruct variant sharing a shipped config
    if same is not None and same.base.lower() in shipped:
        return shipped[same.base.lower()]
    ids = sorted(k for k in shipped if "/" not in k)
    raise GpufitError(
        f"model {model!r}: no such file or folder ({candidate}), and not a shipped "
        f"model id ({', '.join(ids)})"
    )


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    """The config object and its text (errors name the line of a bad field)."""
    try:
        text = path.read_text("utf-8")
        data = json.loads(text)
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
    return data, text


def load_spec(model: str | Path, base: Path | None = None) -> ModelSpec:
    """Read a model folder or config.json into a ``ModelSpec`` (cached per file and mtime).

    Every field read is checked (``config_fields``) and so is every safetensors header: bad
    input is one ``GpufitError`` naming the file and what is wrong, never an estimate.
    """
    path = resolve_model(str(model), base)
    config_path = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not config_path.exists():
        raise GpufitError(f"{path}: a model folder needs a config.json")
    stamp = config_path.stat().st_mtime_ns if config_path.exists() else 0
    if path.is_dir():  # a rewritten or truncated checkpoint must not reuse a cached spec
        stamp = hash((stamp, *_checkpoint_stamps(path)))
    return _load_spec(str(path), stamp)


def _checkpoint_stamps(folder: Path) -> list[tuple[str, int, int]]:
    stamps = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            stat = file.stat()
        except OSError:
            continue  # reported by checkpoint_info when it reads the file
        stamps.append((file.name, stat.st_size, stat.st_mtime_ns))
    return stamps


@functools.lru_cache(maxsize=64)
def _load_spec(path_text: str, _stamp: int) -> ModelSpec:
    path = Path(path_text)
    config_path = path / "config.json" if path.is_dir() else path
    config, text = _read_json(config_path)
    checkpoint = checkpoint_info(path) if path.is_dir() else None
    name = path.name if path.is_dir() else config_path.stem.partition("__")[2] or path.parent.name
    return spec_from_config(
        config, name=name, path=str(path), checkpoint=checkpoint, source=str(config_path), text=text
    )


def spec_from_config(
    raw: dict[str, Any],
    name: str = "model",
    path: str = "config.json",
    checkpoint: CheckpointInfo | None = None,
    source: str | None = None,
    text: str | None = None,
) -> ModelSpec:
    """Compute a ``ModelSpec`` from a config dict; ``source`` (default ``path``) and ``text``
    name the file and line of a bad field in errors."""
    top = ConfigFields(raw, source or path, text)
    inner = top.nested("text_config")
    config = inner if inner is not None and inner.data else top
    warnings: list[str] = []
    if config is not top:
        warnings.append("multimodal config: only the language model (text_config) is counted")
    model_type = config.string("model_type") or top.string("model_type") or "unknown"
    if model_type not in KNOWN_TYPES:
        missing = [f for f in GENERIC_FIELDS if f not in config.data]
        if missing:
            raise GpufitError(
                f"{top.source}: unknown model_type {model_type!r} and the generic fields "
                f"{', '.join(missing)} are missing; cannot estimate"
            )
        warnings.append(
            f"unknown model_type {model_type!r}: estimated as a dense decoder from "
            f"{', '.join(GENERIC_FIELDS)} (GQA, gated MLP, untied embeddings unless "
            "tie_word_embeddings says otherwise)"
        )
    h = config.required("hidden_size")
    layers = config.required("num_hidden_layers")
    vocab = config.required("vocab_size")
    heads = config.required("num_attention_heads")
    kv_heads = config.whole("num_key_value_heads") or heads
    if heads % kv_heads:
        raise config.error(
            "num_key_value_heads", f"must divide num_attention_heads ({heads})", kv_heads
        )
    head_dim = config.whole("head_dim") or h // heads
    if not head_dim:
        raise config.error(
            "hidden_size", f"must be at least num_attention_heads ({heads}) without head_dim", h
        )
    dense_i = config.whole("intermediate_size") or 0

    tied = config.flag("tie_word_embeddings", model_type.startswith("gemma"))
    embedding = vocab * h
    lm_head = 0 if tied else vocab * h

    attention_layer, kv, mla_norms, split = _attention(
        config, model_type, h, heads, kv_heads, head_dim, layers
    )
    moe = _moe(config, model_type, h, layers, dense_i)
    norms = layers * 2 * h + h + layers * mla_norms
    if model_type in ("qwen3", "qwen3_moe") or model_type.startswith("gemma3"):
        norms += layers * 2 * head_dim  # q_norm, k_norm
    if model_type.startswith("gemma2") or model_type.startswith("gemma3"):
        norms += layers * 2 * h  # pre/post feed-forward norms

    configured = config.whole("max_position_embeddings")
    maximum = _rope_maximum(config, model_type, configured, warnings)

    mtp = 0
    n_mtp = config.whole("num_nextn_predict_layers", minimum=0) or 0
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
        attention_kv=layers * split[0],
        attention_replicated=layers * split[1],
    )

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
        max_position_embeddings=maximum,
        configured_max_position_embeddings=configured if configured != maximum else None,
        stored_dtype=_stored_dtype(config, top, warnings),
        params=params,
        kv=kv,
        quantization=_with_ignored(
            _quantization(config, warnings), config, moe, h, heads, kv_heads, head_dim, layers
        ),
        checkpoint=checkpoint,
        warnings=tuple(warnings),
        experts_per_token=moe["top_k"],
        expert_intermediate_size=moe["expert_i"],
        rotary_dim=config.whole("qk_rope_head_dim") or head_dim,
    )


def rope_maximum(
    top: int, rope_type: str, factor: float, original: int | None, model_type: str = ""
) -> float:
    """The maximum context vLLM derives from ``max_position_embeddings`` (``top``) and a rope
    scaling block (its ``_get_and_verify_max_len``): YaRN scales the original trained length,
    the other types the maximum; llama3/longrope/su are already in it, as is Gemma 3's.

    >>> rope_maximum(40960, "yarn", 4.0, 32768), rope_maximum(40960, "dynamic", 2.0, None)
    (131072.0, 81920.0)
    >>> rope_maximum(131072, "llama3", 8.0, 8192)
    131072.0
    """
    if rope_type in ROPE_UNSCALED or "gemma3" in model_type:
        return float(top)
    base = original if rope_type == "yarn" and original else top
    return base * factor


def _rope_maximum(
    config: ConfigFields, model_type: str, top: int | None, warnings: list[str]
) -> int | None:
    """``max_position_embeddings`` moved by the config's own ``rope_scaling``, as vLLM moves it
    (a Qwen card says to add a YaRN block to config.json for 131,072 tokens)."""
    # transformers 5 writes the block as rope_parameters (and rope_theta inside it).
    rope = config.nested("rope_scaling") or config.nested("rope_parameters")
    if rope is None or top is None:
        return top
    rope_type = rope.string("rope_type") or rope.string("type")
    if rope_type is None:
        return top
    raw = rope.data.get("factor")
    factor = 1.0 if raw is None else raw  # vLLM's default ("default" has no factor)
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or not math.isfinite(factor)
        or factor <= 0
    ):
        raise rope.error("factor", "must be a number above 0", raw)
    original = rope.whole("original_max_position_embeddings")
    if rope_type == "yarn" and original is None:
        warnings.append(
            "rope_scaling in config.json is yarn without original_max_position_embeddings, "
            "which vLLM needs to derive the maximum: the maximum stays max_position_embeddings"
        )
        return top
    scaled = rope_maximum(top, rope_type, float(factor), original, model_type)
    limit = MAXIMA["max_position_embeddings"]
    if not 1 <= scaled <= limit:
        raise rope.error("factor", f"must give a maximum from 1 to {limit:,} tokens", raw)
    if int(scaled) != top:
        warnings.append(
            f"rope_scaling in config.json ({rope_type} x{float(factor):g}): maximum context "
            f"{int(scaled):,} tokens (max_position_embeddings {top:,})"
        )
    return int(scaled)


def _stored_dtype(config: ConfigFields, top: ConfigFields, warnings: list[str]) -> str:
    """The checkpoint's float format from ``torch_dtype`` (newer transformers write ``dtype``)."""
    for fields, key in ((config, "torch_dtype"), (config, "dtype"), (top, "torch_dtype")):
        value = fields.string(key)
        if value is None:
            continue
        stored = _TORCH_DTYPES.get(value.removeprefix("torch."))
        if stored is None:
            raise fields.error(key, f"must be one of {', '.join(_TORCH_DTYPES)}", value)
        return stored
    warnings.append("config names no torch_dtype; bfloat16 assumed")
    return "bf16"


def _attention(
    config: ConfigFields,
    model_type: str,
    h: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    layers: int,
) -> tuple[int, KvLayout, int, tuple[int, int]]:
    """Attention parameters per layer, the KV layout, MLA's extra norm parameters, and the
    per-layer (k/v projection, replicated latent projection) parameters."""
    kv_rank = config.whole("kv_lora_rank")
    if kv_rank:
        needed = "is required with kv_lora_rank (MLA attention): a whole number from 1"
        rope = config.whole("qk_rope_head_dim")
        nope = config.whole("qk_nope_head_dim")
        if rope is None or nope is None:
            raise config.error("qk_rope_head_dim" if rope is None else "qk_nope_head_dim", needed)
        v_dim = config.whole("v_head_dim") or nope
        q_rank = config.whole("q_lora_rank")
        q = (h * q_rank + q_rank * heads * (nope + rope)) if q_rank else h * heads * (nope + rope)
        per_layer = q + h * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * h
        norms = (q_rank or 0) + kv_rank
        latent = h * (q_rank or 0) + h * (kv_rank + rope)  # q_a_proj, kv_a_proj_with_mqa
        return per_layer, KvLayout(kv_rank + rope, layers, kind="mla"), norms, (0, latent)
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    per_layer = h * q_out + 2 * h * kv_out + q_out * h
    kv_proj = 2 * h * kv_out
    if config.flag("attention_bias", False):
        per_layer += q_out + 2 * kv_out + h
        kv_proj += 2 * kv_out
    elif model_type in ("qwen2", "qwen2_moe"):
        per_layer += q_out + 2 * kv_out  # Qwen2 has q/k/v biases without the flag
        kv_proj += 2 * kv_out
    if model_type == "gpt_oss":
        per_layer += heads  # attention sinks
    return per_layer, _kv_layout(config, model_type, layers, 2 * kv_out), 0, (kv_proj, 0)


def _kv_layout(config: ConfigFields, model_type: str, layers: int, elements: int) -> KvLayout:
    window = config.whole("sliding_window", minimum=0)  # 0 is "none" (Qwen2-MoE's default)
    types = config.strings("layer_types")
    if types is not None and len(types) != layers:
        raise config.error(
            "layer_types",
            f"must name one type per layer: {layers} (num_hidden_layers), not {len(types)}",
        )
    if types is not None and window:
        sliding = sum(1 for t in types if t == "sliding_attention")
        return KvLayout(elements, layers - sliding, sliding, window)
    if not window or not config.flag("use_sliding_window", True):
        return KvLayout(elements, layers)
    if model_type == "gemma2":
        sliding = layers // 2  # alternating local/global layers
    elif model_type.startswith("gemma3"):
        pattern = config.whole("sliding_window_pattern") or 6
        sliding = layers - layers // pattern
    else:
        sliding = layers  # Mistral-style: every layer slides
    return KvLayout(elements, layers - sliding, sliding, window)


def _moe(
    config: ConfigFields, model_type: str, h: int, layers: int, dense_i: int
) -> dict[str, int]:
    counts = [
        (key, config.whole(key, minimum=0))
        for key in ("num_experts", "num_local_experts", "n_routed_experts")
    ]
    experts = next((n for _, n in counts if n), 0)
    if not experts:
        if not dense_i:
            config.required("intermediate_size")  # absent: the error names the field
        return {
            "dense": layers * 3 * h * dense_i,
            "experts": 0,
            "experts_active": 0,
            "shared": 0,
            "router": 0,
            "moe_layers": 0,
            "active_intermediate": dense_i,
            "top_k": 0,
            "expert_i": 0,
        }
    experts_key = next(k for k, n in counts if n)
    top_k_key = "num_experts_per_tok"  # gpt-oss also writes experts_per_token
    if not config.whole(top_k_key):
        top_k_key = "experts_per_token"
    top_k = config.whole(top_k_key) or 1
    if top_k > experts:
        raise config.error(top_k_key, f"must be at most {experts_key} ({experts})", top_k)
    expert_i = config.whole("moe_intermediate_size") or dense_i
    if not expert_i:
        raise config.error(
            "moe_intermediate_size", "(or intermediate_size) is required for an MoE model"
        )
    per_expert = 3 * h * expert_i
    router_per_layer = h * experts
    if model_type == "gpt_oss":
        per_expert += 2 * expert_i + h  # gate_up and down biases
        router_per_layer += experts
    shared_i = (config.whole("n_shared_experts", minimum=0) or 0) * expert_i
    shared_size = config.whole("shared_expert_intermediate_size", minimum=0)
    if shared_size:
        shared_i = shared_size
        router_per_layer += h  # Qwen2-MoE's shared-expert gate
    moe_layers = _moe_layers(config, layers)
    n_moe, n_dense = len(moe_layers), layers - len(moe_layers)
    if n_dense and not dense_i:
        config.required("intermediate_size")  # the dense layers need their MLP size
    return {
        "dense": n_dense * 3 * h * dense_i,
        "experts": n_moe * experts * per_expert,
        "experts_active": n_moe * top_k * per_expert,
        "shared": n_moe * 3 * h * shared_i,
        "router": n_moe * router_per_layer,
        "moe_layers": n_moe,
        "active_intermediate": top_k * expert_i + shared_i,
        "top_k": top_k,
        "expert_i": expert_i,
    }


def _moe_layers(config: ConfigFields, layers: int) -> list[int]:
    """Indices of the sparse layers: DeepSeek's first k are dense, Qwen's mlp_only_layers too,
    and decoder_sparse_step / moe_layer_freq space the rest."""
    first_dense = config.whole("first_k_dense_replace", minimum=0) or 0
    if first_dense > layers:
        raise config.error(
            "first_k_dense_replace", f"must be at most num_hidden_layers ({layers})", first_dense
        )
    dense_only = set(config.wholes("mlp_only_layers", 0, layers - 1))
    sparse_step = config.whole("decoder_sparse_step")
    step = sparse_step or config.whole("moe_layer_freq") or 1
    offset = 1 if "decoder_sparse_step" in config.data else 0
    return [
        i for i in range(first_dense, layers) if i not in dense_only and (i + offset) % step == 0
    ]


_LINEAR = ("attention", "dense_mlp", "experts", "shared_experts")


def _compressed_tensors(
    q: ConfigFields, config: ConfigFields, warnings: list[str]
) -> Quantization | None:
    """llm-compressor checkpoints (RedHat's w8a8, w4a16, fp8): the first config group's
    weight format; its ``ignore`` list is counted like ``modules_to_not_convert``."""
    groups = q.nested("config_groups")
    first = next((groups.nested(k) for k in groups.data), None) if groups else None
    weights = first.nested("weights") if first else None
    if weights is None:
        warnings.append("compressed-tensors config without config_groups weights: not modelled")
        return None
    bits = weights.whole("num_bits")
    kind = (weights.string("type") or "int").lower()
    fmt = {(8, "float"): "fp8", (8, "int"): "int8", (4, "int"): "int4", (4, "float"): "nvfp4"}
    dtype = fmt.get((bits or 0, kind))
    if dtype is None:
        raise weights.error("num_bits", "must be 4 or 8 with type int or float", bits)
    return Quantization("compressed-tensors", dtype, _LINEAR)


# Linear modules of a decoder layer, by role, with their shapes: (name, role, in, out).
def _layer_modules(
    config: ConfigFields, h: int, heads: int, kv_heads: int, head_dim: int
) -> list[tuple[str, str, int]]:
    kv_rank = config.whole("kv_lora_rank")
    if kv_rank:
        rope = config.whole("qk_rope_head_dim") or 0
        nope = config.whole("qk_nope_head_dim") or 0
        v_dim = config.whole("v_head_dim") or nope
        q_rank = config.whole("q_lora_rank")
        attn = [
            ("kv_a_proj_with_mqa", h * (kv_rank + rope)),
            ("kv_b_proj", kv_rank * heads * (nope + v_dim)),
            ("o_proj", heads * v_dim * h),
        ]
        if q_rank:
            attn += [("q_a_proj", h * q_rank), ("q_b_proj", q_rank * heads * (nope + rope))]
        else:
            attn += [("q_proj", h * heads * (nope + rope))]
    else:
        attn = [
            ("q_proj", h * heads * head_dim),
            ("k_proj", h * kv_heads * head_dim),
            ("v_proj", h * kv_heads * head_dim),
            ("o_proj", heads * head_dim * h),
        ]
    return [(f"self_attn.{name}", "attention", n) for name, n in attn]


def _ignored(name: str, patterns: tuple[str, ...]) -> bool:
    """vLLM's and transformers' reading of an ignore list: ``re:`` regexes, globs, a module
    name or the name of a module that contains it (``model.layers.0.self_attn``)."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                if re.fullmatch(pattern[3:], name) or re.search(pattern[3:], name):
                    return True
            except re.error:
                continue
        elif "*" in pattern or "?" in pattern:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*"):
                return True
        elif name == pattern or name.startswith(pattern + "."):
            return True
    return False


def _with_ignored(
    quant: Quantization | None,
    config: ConfigFields,
    moe: dict[str, int],
    h: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    layers: int,
) -> Quantization | None:
    """Count, module by module, the parameters an ignore list keeps in the float format."""
    if quant is None or not quant.ignore:
        return quant
    per_layer = _layer_modules(config, h, heads, kv_heads, head_dim)
    dense_i = config.whole("intermediate_size") or 0
    sparse = set(_moe_layers(config, layers)) if moe["moe_layers"] else set()
    shared_i = moe["shared"] // (3 * h * max(moe["moe_layers"], 1)) if moe["shared"] else 0
    counts: dict[str, int] = {}
    for i in range(layers):
        modules = list(per_layer)
        if i in sparse:
            if shared_i:
                modules += [
                    (f"mlp.shared_experts.{p}_proj", "shared_experts", h * shared_i)
                    for p in ("gate", "up", "down")
                ]
        elif dense_i:
            modules += [(f"mlp.{p}_proj", "dense_mlp", h * dense_i) for p in ("gate", "up", "down")]
        for name, role, n in modules:
            if role in quant.roles and _ignored(f"model.layers.{i}.{name}", quant.ignore):
                counts[role] = counts.get(role, 0) + n
    return dataclasses.replace(quant, unquantized=tuple(sorted(counts.items())))


def _quantization(config: ConfigFields, warnings: list[str]) -> Quantization | None:
    q = config.nested("quantization_config")
    if q is None:
        return None
    method = (q.string("quant_method") or "").lower()
    ignore = tuple(q.strings("modules_to_not_convert") or []) + tuple(q.strings("ignore") or [])
    found = _quantization_format(q, method, config, warnings)
    if found is None:
        return None
    return dataclasses.replace(found, ignore=ignore)


def _quantization_format(
    q: ConfigFields, method: str, config: ConfigFields, warnings: list[str]
) -> Quantization | None:
    if method == "fbgemm_fp8":  # Meta's FP8 checkpoints: fp8 weights, one scale per row
        return Quantization("fbgemm_fp8", "fp8", _LINEAR)
    if method == "compressed-tensors":
        return _compressed_tensors(q, config, warnings)
    if method == "fp8":
        block = q.wholes("weight_block_size", 1, MAXIMA["weight_block_size"]) or [128, 128]
        if len(block) != 2:
            raise q.error("weight_block_size", "must be [rows, columns]", block)
        return Quantization("fp8", "fp8", _LINEAR, block[0] * block[1])
    if method == "mxfp4":
        skipped = " ".join(q.strings("modules_to_not_convert") or [])
        roles = ("experts",) if "self_attn" in skipped else ("attention", "experts")
        return Quantization("mxfp4", "mxfp4", roles, 32)
    if method in ("awq", "gptq"):
        bits = q.whole("bits") or q.whole("w_bit") or 4
        group = q.whole("group_size", minimum=-1) or q.whole("q_group_size", minimum=-1) or 128
        if bits not in (4, 8):
            raise GpufitError(
                f"{config.source}: quantization_config: {bits}-bit {method} is not supported; "
                "4 and 8 are"
            )
        return Quantization(method, f"int{bits}", _LINEAR, group if group > 0 else None)
    warnings.append(
        f"quantization_config quant_method {method!r} is not modelled; "
        "weights are estimated as stored at torch_dtype"
    )
    return None
