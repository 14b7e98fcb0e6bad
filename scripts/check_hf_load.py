"""Loads a ponder model folder (e.g. a checkpoint) with transformers, prints its config and
a greedy sample, and checks that its logits match ponder's on the same prompt.

    .venv/bin/python scripts/check_hf_load.py runs/tiny-r1-zero/stages/grpo/checkpoints/step-100 \
        "User: What is 47 + 38?. Assistant:" [--ponder target/release/ponder]
"""
import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prompt")
ap.add_argument("--ponder", default="target/release/ponder")
ap.add_argument("--max-new-tokens", type=int, default=32)
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
print(f"loaded {type(model).__name__} with {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
ids = tok(a.prompt, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, do_sample=False, max_new_tokens=a.max_new_tokens)
new = out[0, ids.shape[1]:].tolist()
print("transformers greedy:", repr(tok.decode(new, skip_special_tokens=False)))

# ponder's greedy continuation of the same prompt must be the same tokens.
res = subprocess.run(
    [a.ponder, "generate", "--model", a.model, "--prompt", a.prompt, "--temperature", "0",
     "--max-new-tokens", str(a.max_new_tokens), "--json"],
    capture_output=True, text=True, check=True)
ponder_ids = json.loads(res.stdout.splitlines()[0])["token_ids"]
eos = model.generation_config.eos_token_id
eos = set(eos if isinstance(eos, list) else [eos])
hf = [t for t in new]
# transformers pads finished sequences with pad/eos; compare up to ponder's length.
if hf[: len(ponder_ids)] != ponder_ids:
    print("MISMATCH: ponder", ponder_ids, "transformers", hf, file=sys.stderr)
    sys.exit(1)
print(f"ponder greedy matches transformers ({len(ponder_ids)} tokens)")
