"""Tiny random Hugging Face models, a tiny tokenizer and reference outputs from the Python
implementations (transformers, tokenizers, jinja2), written as small committed fixtures under
rollout/tests/fixtures/. ponder's rollout tests (parity.rs, chat_template.rs, pool.rs) compare
the Rust side against them.

Run (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt
    .venv/bin/python scripts/make_fixtures.py

Everything is deterministic (fixed seeds, CPU, fp32): running it twice gives the same files.

What it writes (the whole folder stays well under 3 MB):
  rollout/tests/fixtures/<model>/   config.json, *.safetensors, generation_config.json,
                                    tokenizer.json, tokenizer_config.json (+ chat_template.jinja),
                                    reference.json
  rollout/tests/fixtures/chat_templates.json
Models:
  qwen2-tied      Qwen2, hidden 64, 4 heads / 2 KV, tied embeddings, transformers-4 style
                  config.json, ChatML (Qwen2.5-like) template inside tokenizer_config.json
  qwen2-untied    Qwen2, hidden 128, 8 heads / 2 KV (head_dim 16), rope_theta 1e6, untied,
                  transformers-5 style config; template list form [{name, template}] in
                  tokenizer_config.json (a plain trim_blocks/lstrip_blocks ChatML template)
  llama3-sharded  Llama, 4 heads / 1 KV, llama3 rope scaling (original_max_position_embeddings
                  16 so positions < 40 really see it), 2 safetensors shards + index,
                  Llama-3.1-style template saved as chat_template.jinja
  llama-bias      Llama with attention_bias, tied, linear rope scaling written the old way
                  (`rope_scaling: {"type": "linear", ...}`), transformers-4 style; no template
reference.json: prompts (3, 7, 12 tokens), full fp32 logits per prompt, 12 greedy tokens per
prompt (min_new_tokens=12 so EOS cannot stop it) and their log-softmax under the raw logits.
"""
import hashlib
import json
import os
import shutil

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "rollout", "tests", "fixtures")

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Reasoning markers are ordinary added tokens (not special): decoding with
# skip_special_tokens keeps them, as in DeepSeek-R1 / Qwen3 tokenizers.
ADDED = ["<think>", "</think>", "<answer>", "</answer>"]
VOCAB_TARGET = 420  # BPE vocab (bytes + merges + specials) before the 4 added tokens

# Qwen2's pre-tokenizer regex (splits letters, single digits, punctuation runs, newlines).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = """
The quick brown fox jumps over the lazy dog. A user asks a question, and the assistant
solves it. The assistant first thinks about the reasoning process in the mind and then
provides the user with the answer. Let me think step by step. First, we add the numbers.
Then we multiply the result by two. So the answer is 42. Wait, let me check that again.
What is 12 + 30? It is 42. What is 7 * 8? It is 56. What is 100 - 58? It is 42.
Solve for x: 2x + 3 = 11, so 2x = 8 and x = 4. The square root of 144 is 12.
If a train travels 60 miles per hour for 3 hours, it travels 180 miles.
The sum of the angles of a triangle is 180 degrees. Prime numbers: 2, 3, 5, 7, 11, 13.
Compute 3/4 + 1/4 = 1. The derivative of x^2 is 2x. Therefore \\boxed{42} is correct.
You are a helpful assistant. Please reason step by step, and put your final answer
within \\boxed{}. Hello! How can I help you today? Thank you very much.
User: What is the capital of France? Assistant: The capital of France is Paris.
Reinforcement learning with group relative policy optimization rewards correct answers.
你好,世界。我们一步一步地思考。答案是四十二。数学很有趣。
"""


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [l for l in CORPUS.strip().splitlines()]
    tok.train_from_iterator(lines * 4, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    return tok


def llama_tokenizer(tok):
    """Same vocabulary, plus Llama 3's post-processor that prepends <|begin_of_text|>."""
    t = Tokenizer.from_str(tok.to_str())
    bos = "<|begin_of_text|>"
    t.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, t.token_to_id(bos))]
    )
    return t


QWEN_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" and not message.tool_calls %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' + content.strip() + '<|im_end|>\n' }}
    {%- elif not (message.role == "system" and loop.first) %}
        {{- raise_exception('Unsupported role: ' + message.role + '. Roles must be system, user or assistant.') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# No whitespace-control dashes at all: only trim_blocks + lstrip_blocks keep this clean.
PLAIN_CHATML_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
<|im_start|>system
{{ message['content'] | trim }}<|im_end|>
    {% else %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
<think>
{% endif %}
"""

TOOL_TEMPLATE = """{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}
{% endfor %}"""

LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception("Only user and assistant roles are supported after the system message, got " + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 12 + 30?"},
    ],
    [{"role": "user", "content": "Solve for x: 2x + 3 = 11."}],
    [
        {"role": "user", "content": "What is 7 * 8?"},
        {"role": "assistant", "content": "<think>\nseven eights\n</think>\n\n<answer>56</answer>"},
        {"role": "user", "content": "  And 100 - 58?  \n"},
    ],
    [
        {"role": "system", "content": "  Reason step by step.\n"},
        {"role": "user", "content": "你好,世界。2 + 2 = ?"},
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "Thank you!"},
    ],
]
BAD_CONVERSATION = [{"role": "tool", "content": "42"}]

ENCODE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<think>\n2x = 8, so x = 4\n</think>\n<answer>4</answer>",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|endoftext|>",
    "你好,世界。Prime numbers: 2, 3, 5, 7, 11, 13. \\boxed{42}",
    "Zebra quokka xylophone!!  \n\n\tend",
]

PROMPT_TEXTS = [
    "What is 12 + 30? It is",
    "The assistant first thinks about the reasoning process in the mind and then",
    "Solve for x: 2x + 3 = 11, so 2x = 8 and then the answer is",
]
PROMPT_LENGTHS = [3, 7, 12]
NEW_TOKENS = 12

# name -> arch, model kwargs, tokenizer special tokens, template handling, config style
MODELS = {
    "qwen2-tied": dict(
        arch="qwen2",
        cfg=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True, rope_theta=10000.0,
                 max_position_embeddings=128),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        gen_eos=["<|im_end|>", "<|endoftext|>"],
        template=("tokenizer_config", QWEN_TEMPLATE),
        style="v4",
        seed=1,
    ),
    "qwen2-untied": dict(
        arch="qwen2",
        cfg=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=64, tie_word_embeddings=False, rope_theta=1e6,
                 max_position_embeddings=128),
        bos=None, eos="<|endoftext|>", pad="<|endoftext|>",
        gen_eos=["<|endoftext|>"],
        template=("list", [{"name": "default", "template": PLAIN_CHATML_TEMPLATE},
                           {"name": "tool_use", "template": TOOL_TEMPLATE}]),
        style="v5",
        seed=2,
    ),
    "llama3-sharded": dict(
        arch="llama",
        cfg=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                 intermediate_size=128, tie_word_embeddings=False, max_position_embeddings=128,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|endoftext|>",
        gen_eos=["<|eot_id|>", "<|endoftext|>"],
        template=("jinja", LLAMA3_TEMPLATE),
        style="v5",
        seed=3,
        sharded=True,
    ),
    "llama-bias": dict(
        arch="llama",
        cfg=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96, tie_word_embeddings=True, attention_bias=True,
                 max_position_embeddings=128,
                 rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
        bos="<|begin_of_text|>", eos="<|endoftext|>", pad="<|endoftext|>",
        gen_eos=["<|endoftext|>"],
        template=None,
        style="v4",
        seed=4,
    ),
}


def randomize(model, seed):
    """Non-trivial weights everywhere: norms around 1, biases non-zero, std 0.15 matrices,
    so logits are well spread and greedy choices have clear margins."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def sig6(x):
    return float(f"{x:.6g}")


def to_v4_config(path, rope_scaling):
    """Rewrite a transformers-5 config.json in the transformers-4 layout."""
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None) or {}
    cfg.pop("dtype", None)
    out = {}
    for k, v in cfg.items():
        out[k] = v
    out["rope_theta"] = rp.get("rope_theta", 10000.0)
    out["rope_scaling"] = rope_scaling
    out["torch_dtype"] = "float32"
    out["transformers_version"] = "4.46.0"
    with open(path, "w") as f:
        json.dump(dict(sorted(out.items())), f, indent=2)
        f.write("\n")


def save_tokenizer(tok_obj, spec, folder):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.save_pretrained(folder)
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    tcfg.pop("chat_template", None)
    # A class name transformers 4 knows too (5 maps it to its TokenizersBackend).
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if spec["bos"] is not None:
        tcfg["add_bos_token"] = True
    tpl = spec["template"]
    if tpl is not None:
        kind, body = tpl
        if kind == "tokenizer_config":
            tcfg["chat_template"] = body
        elif kind == "list":
            tcfg["chat_template"] = body
        elif kind == "jinja":
            with open(jinja, "w") as f:
                f.write(body)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def build_model(name, spec, vocab, ids):
    torch.manual_seed(spec["seed"])
    common = dict(
        vocab_size=vocab,
        bos_token_id=ids(spec["bos"]) if spec["bos"] else None,
        eos_token_id=ids(spec["gen_eos"][0]),
        pad_token_id=ids(spec["pad"]),
        rms_norm_eps=1e-6,
    )
    if spec["arch"] == "qwen2":
        config = Qwen2Config(**common, **spec["cfg"])
        model = Qwen2ForCausalLM(config)
    else:
        config = LlamaConfig(**common, **spec["cfg"])
        model = LlamaForCausalLM(config)
    model = model.float().eval()
    randomize(model, spec["seed"])
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def save_model(model, spec, folder, ids):
    kwargs = {}
    if spec.get("sharded"):
        total = sum(p.numel() * 4 for p in model.state_dict().values())
        kwargs["max_shard_size"] = int(total * 0.6)
    model.save_pretrained(folder, **kwargs)
    gen = GenerationConfig(
        bos_token_id=ids(spec["bos"]) if spec["bos"] else None,
        eos_token_id=[ids(t) for t in spec["gen_eos"]],
        pad_token_id=ids(spec["pad"]),
    )
    gen.save_pretrained(folder)
    cfg_path = os.path.join(folder, "config.json")
    if spec["style"] == "v4":
        rp = model.config.rope_parameters or {}
        scaling = None
        if rp.get("rope_type", "default") != "default":
            scaling = {"type": rp["rope_type"], "factor": rp["factor"]}
        to_v4_config(cfg_path, scaling)
    if spec.get("sharded"):
        shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        assert len(shards) == 2 and all(s.endswith("-of-00002.safetensors") for s in shards), shards
        assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    else:
        assert os.path.exists(os.path.join(folder, "model.safetensors"))


def reference(model, prompts):
    ref = {"prompts": prompts, "logits": [], "greedy": [], "greedy_logprobs": []}
    min_margin = float("inf")
    with torch.no_grad():
        for p in prompts:
            x = torch.tensor([p])
            logits = model(input_ids=x).logits[0]
            ref["logits"].append([[sig6(v) for v in row] for row in logits.tolist()])
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                output_logits=True,
                output_scores=True,
                return_dict_in_generate=True,
            )
            new = out.sequences[0, len(p):].tolist()
            assert len(new) == NEW_TOKENS
            lps = []
            for step, tok in enumerate(new):
                raw = out.logits[step][0].float()
                lps.append(sig6(torch.log_softmax(raw, -1)[tok].item()))
                proc = out.scores[step][0]
                top2 = torch.topk(proc, 2).values
                min_margin = min(min_margin, (top2[0] - top2[1]).item())
            ref["greedy"].append(new)
            ref["greedy_logprobs"].append(lps)
    return ref, min_margin


def chat_cases(folder, has_template):
    hf = AutoTokenizer.from_pretrained(folder)
    entry = {
        "bos_token": hf.bos_token,
        "eos_token": hf.eos_token,
        "pad_token": hf.pad_token,
        "vocab_size": len(hf),
        "has_chat_template": has_template,
        "chats": [],
        "errors": [],
        "encodings": [],
    }
    if has_template:
        for conv in CONVERSATIONS:
            for agp in (False, True):
                text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                ids = hf.encode(text, add_special_tokens=False)
                assert hf.decode(ids) == text
                entry["chats"].append(
                    {"messages": conv, "add_generation_prompt": agp, "text": text, "ids": ids}
                )
        try:
            hf.apply_chat_template(BAD_CONVERSATION, tokenize=False)
        except Exception as e:  # jinja2 TemplateError from raise_exception
            entry["errors"].append({"messages": BAD_CONVERSATION, "message": str(e)})
    for text in ENCODE_TEXTS:
        ids = hf.encode(text, add_special_tokens=False)
        ids_special = hf.encode(text, add_special_tokens=True)
        entry["encodings"].append(
            {
                "text": text,
                "ids": ids,
                "ids_with_special": ids_special,
                "decoded": hf.decode(ids_special, skip_special_tokens=False),
                "decoded_skip_special": hf.decode(ids_special, skip_special_tokens=True),
            }
        )
    return entry


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    base_tok = build_tokenizer()
    vocab = base_tok.get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: {vocab} tokens")

    def ids(t):
        i = base_tok.token_to_id(t)
        assert i is not None, t
        return i

    templates = {}
    for name, spec in MODELS.items():
        folder = os.path.join(OUT, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        tok_obj = llama_tokenizer(base_tok) if spec["arch"] == "llama" else Tokenizer.from_str(base_tok.to_str())
        save_tokenizer(tok_obj, spec, folder)
        model = build_model(name, spec, vocab, ids)
        save_model(model, spec, folder, ids)

        # Prompts: prefixes of real text, encoded without special tokens.
        prompts = [base_tok.encode(t, add_special_tokens=False).ids[:n] for t, n in zip(PROMPT_TEXTS, PROMPT_LENGTHS)]
        assert [len(p) for p in prompts] == PROMPT_LENGTHS, [len(p) for p in prompts]
        # Reload from disk so the reference is what transformers reads back from the folder.
        cls = Qwen2ForCausalLM if spec["arch"] == "qwen2" else LlamaForCausalLM
        reloaded = cls.from_pretrained(folder, dtype=torch.float32).eval()
        ref, margin = reference(reloaded, prompts)
        with open(os.path.join(folder, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        print(f"{name}: min greedy top-2 margin {margin:.4f}")
        assert margin > 1e-3, f"{name}: greedy choice too close to a tie; change the seed"

        templates[name] = chat_cases(folder, spec["template"] is not None)
        if spec["template"] and spec["template"][0] == "jinja":
            assert os.path.exists(os.path.join(folder, "chat_template.jinja"))

    with open(os.path.join(OUT, "chat_templates.json"), "w") as f:
        json.dump({"models": templates}, f, indent=1, ensure_ascii=False)
        f.write("\n")

    total = 0
    for dirpath, _, files in os.walk(OUT):
        for fn in sorted(files):
            p = os.path.join(dirpath, fn)
            total += os.path.getsize(p)
    print(f"fixtures: {total / 1e6:.2f} MB under {os.path.relpath(OUT, ROOT)}")
    assert total < 3.2e6, "fixtures grew past ~3 MB"
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(OUT)):
        for fn in sorted(files):
            with open(os.path.join(dirpath, fn), "rb") as f:
                h.update(fn.encode() + f.read())
    print(f"fixtures sha256: {h.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
