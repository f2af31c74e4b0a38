"""Write the GPU tier's served checkpoint: Qwen3-0.6B's shipped config, random bf16 weights.

    python tests/gpu/make_serve_model.py DIR [--tiny]

The tokenizer is a word-level one made with ``tokenizers`` whose vocabulary covers every id the
model can emit (random weights pick any of the 151,936): a smaller vocabulary would decode most
generated ids to nothing, and the server would stream empty chunks. BOS/EOS become ids 1 and 2.
``--tiny`` keeps the architecture but shrinks it (hidden 256, 2 layers, 4 heads of 64) so the
CPU dry run (``GPUFIT_TIER_DRY_RUN=1 scripts/gpu-tier.sh``) serves it in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pytest_gpufit" / "fit" / "models" / "Qwen__Qwen3-0.6B.json"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 4096,
}


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import WORDS

    words = list(WORDS) + [f"w{i}" for i in range(len(WORDS), vocab_size)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tiny", action="store_true", help="shrunk shape for the CPU dry run")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(CONFIG.read_text())
    data.pop("torch_dtype", None)
    data.update(bos_token_id=1, eos_token_id=2, dtype="bfloat16")
    if args.tiny:
        data.update(TINY)
    config = AutoConfig.for_model(**data)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    args.folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.folder)
    save_tokenizer(args.folder, int(config.vocab_size))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.folder}: qwen3, {params / 1e6:.1f}M parameters, vocab {config.vocab_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
