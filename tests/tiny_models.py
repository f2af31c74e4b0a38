"""Tiny real models built by the tests: random weights saved through safetensors, no downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=256,
    max_position_embeddings=512,
    head_dim=16,
)

# One small config per architecture family the estimator knows.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": dict(tie_word_embeddings=False),
    "mistral": dict(sliding_window=64, tie_word_embeddings=False),
    "qwen2": dict(tie_word_embeddings=False),
    "qwen3": dict(tie_word_embeddings=True),
    "gemma2": dict(),
    "gemma3_text": dict(),
    "qwen3_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        mlp_only_layers=[1],
        decoder_sparse_step=1,
        tie_word_embeddings=False,
    ),
    "qwen2_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        tie_word_embeddings=False,
    ),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
    "deepseek_v3": dict(
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=32,
        q_lora_rank=48,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        n_group=2,
        topk_group=1,
        tie_word_embeddings=False,
        num_key_value_heads=4,
    ),
    "gpt_oss": dict(
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        attention_bias=True,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
}


def build_model(model_type: str, **overrides: Any) -> Any:
    """A transformers model with random weights, built on the CPU."""
    import torch  # late: only tests that need a real model pay for torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {**BASE, **ARCHITECTURES.get(model_type, {}), **overrides}
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def save_checkpoint(
    folder: Path, model_type: str = "llama", dtype: str = "bfloat16", **overrides: Any
) -> Path:
    """Save a tiny model (config.json + model.safetensors) into ``folder``."""
    import torch

    model = build_model(model_type, **overrides).to(getattr(torch, dtype))
    model.config.torch_dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


WORDS = [
    "<unk>",
    "<s>",
    "</s>",
    "the",
    "capital",
    "of",
    "france",
    "is",
    "paris",
    "a",
    "city",
    "and",
    "model",
    "runs",
    "on",
    "card",
    "fast",
    "slow",
    "gpu",
    "test",
]


def save_tokenizer(folder: Path) -> None:
    """A small word-level tokenizer made with the ``tokenizers`` library, saved for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def save_tiny_checkpoint(folder: Path) -> Path:
    """A tiny Llama checkpoint (bf16 safetensors) with a tokenizer: loads from real files."""
    save_checkpoint(
        folder,
        "llama",
        vocab_size=len(WORDS) + 12,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
    )
    save_tokenizer(folder)
    return folder
