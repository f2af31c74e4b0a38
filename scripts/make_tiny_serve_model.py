"""Rebuild suites/models/tiny-serve: the ~0.6 MB checkpoint suites/serve-cpu-example.yaml serves.

A Llama with head size 64 (hidden 128, 2 heads) so vLLM's CPU attention accepts it too, a
word-level tokenizer made with ``tokenizers`` and a minimal chat template. Needs the hf extra.

Its output rows of the special tokens (``<unk>``, ``<s>``, ``</s>``) are zero, so greedy
decoding picks a word: random weights gave them 3 of 20 chances a step, and a server asked
for an exact count (``min_new_tokens`` keeps only ``</s>`` out) then streamed answers of
``<s>``/``<unk>`` tokens that count in its usage but render as no text, which the gate's
usage check rightly cannot tell from a lie (issue 18). Zero logits lose to the largest of 17
random ones but once in 2**17 steps.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import WORDS, save_checkpoint, save_tokenizer  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def main() -> None:
    torch.manual_seed(0)
    folder = ROOT / "suites" / "models" / "tiny-serve"
    shape = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
    shape.update(head_dim=64, intermediate_size=256, num_hidden_layers=2)
    save_checkpoint(folder, "llama", vocab_size=len(WORDS), **shape)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    specials = [WORDS.index(word) for word in ("<unk>", "<s>", "</s>")]
    tensors["lm_head.weight"][specials] = 0
    save_file(tensors, weights, metadata={"format": "pt"})
    save_tokenizer(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)


if __name__ == "__main__":
    main()
