#!/usr/bin/env python3
"""Build two tiny random HF checkpoints plus reference outputs from HF transformers.

Writes, under --out (default tests/fixtures):

  tiny-qwen2/   Qwen2ForCausalLM: hidden 64, 2 layers, 4 heads, 2 KV heads (GQA), head_dim 16,
                intermediate 160, Q/K/V biases, rope_theta 1e6, rms_norm_eps 1e-6,
                tied embeddings, Qwen2-style pre-tokenizer.
  tiny-llama/   LlamaForCausalLM: hidden 64, 2 layers, 4 heads, 1 KV head, head_dim 16,
                intermediate 96, no biases, rope_theta 1e4, rms_norm_eps 1e-5,
                untied lm_head, GPT-2 style pre-tokenizer.

Each directory holds config.json, generation_config.json, model.safetensors (float32),
tokenizer.json, tokenizer_config.json, special_tokens_map.json and expected.json.

Weights are random (normal, std --std), norm weights 1 + N(0, 0.1), biases N(0, 0.05); every
2-D weight (embedding, lm_head, q/k/v/o, gate/up/down) then goes through fake_quant_int4
(tools/quant.py), so an engine that quantizes to int4 on load sees exactly these numbers.

expected.json holds, for a few texts (plain and chat-template rendered): the token ids from the
HF tokenizer, the full float32 logits at every position (eager attention, float32, CPU) and the
greedy continuation of 8 tokens from generate(do_sample=False) with EOS stopping disabled.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant import check_idempotent, fake_quant_int4  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split pattern (from its tokenizer.json).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
Hello, world! Hello there. How are you today? I am fine, thank you.
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
Water boils at 100 degrees Celsius at sea level. Ice melts at 0 degrees.
A transformer model reads tokens, looks at every earlier token with attention,
and predicts the next token. Each layer has attention and a feed-forward network.
def square(x):
    return x * x

def add(a, b):
    return a + b

for i in range(10):
    print(i, square(i))

class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

fn main() {
    let v: Vec<u32> = (0..10).collect();
    println!("{:?}", v);
}

What is 17 * 23? It is 391. What is 2 + 2? It is 4. 12 + 30 = 42.
The sun rises in the east and sets in the west. The moon goes around the earth.
She sells sea shells by the sea shore. Peter Piper picked a peck of pickled peppers.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 -7 1e6.
Punctuation: ( ) [ ] { } < > = + - * / % ! ? . , ; : " ' ` ~ @ # $ ^ & | \\ _
Caf\u00e9, na\u00efve, r\u00e9sum\u00e9, \u00fcber, stra\u00dfe, \u3053\u3093\u306b\u3061\u306f, \u4f60\u597d, \u2713, \U0001f600.
user: Can you help me write a function?
assistant: Sure! Here is a function that returns the square of a number.
system: You are a helpful assistant.
Once upon a time there was a little robot who liked to count the stars in the night sky.
Every night the robot counted one more star than the night before.
"""

PLAIN_TEXTS = [
    "The capital of France is Paris.",
    "def square(x):\n    return x * x",
    "Caf\u00e9 \u2713 42!",
]
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

N_GREEDY = 8


def train_tokenizer(vocab_size: int, style: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in CORPUS.splitlines(keepends=True)], trainer=trainer)
    return tok


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf


def build_model(kind: str, vocab: int, eos_id: int, pad_id: int, std: float, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=std,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        torch_dtype="float32",
    )
    if kind == "qwen2":
        cfg = Qwen2Config(
            intermediate_size=160,
            num_key_value_heads=2,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            **common,
        )
        cls = Qwen2ForCausalLM
    else:
        cfg = LlamaConfig(
            intermediate_size=96,
            num_key_value_heads=1,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            **common,
        )
        cls = LlamaForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    quantized = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
                q = fake_quant_int4(p.detach().numpy())
                assert check_idempotent(q), name
                p.copy_(torch.from_numpy(q))
                quantized.append(name)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    return model, quantized


def f32_list(t: torch.Tensor):
    """Float32 values as the shortest decimals that read back as the same float32."""
    a = t.detach().to(torch.float32).numpy()
    return [[float(str(x)) for x in row] for row in a] if a.ndim == 2 else [float(str(x)) for x in a]


def greedy(model, ids, n):
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=model.config.pad_token_id,
        bos_token_id=None, num_beams=1,
    )
    inp = torch.tensor([ids])
    out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc)
    gen_ids = out[0, len(ids):].tolist()
    # Cross-check with a cache-free argmax loop, and record each step's top-1/top-2 margin.
    cur = list(ids)
    margins = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([cur])).logits[0, -1]
            top = torch.topk(logits, 2)
            margins.append(round(float(top.values[0] - top.values[1]), 6))
            cur.append(int(top.indices[0]))
    assert cur[len(ids):] == gen_ids, (cur[len(ids):], gen_ids)
    return gen_ids, margins


def make_fixture(kind: str, out_dir: Path, vocab_target: int, std: float, seed: int):
    import transformers
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(vocab_target, kind)
    hf_tok = wrap_tokenizer(tok)
    # chat_template goes into tokenizer_config.json (not a separate chat_template.jinja).
    hf_tok.save_pretrained(out_dir, save_jinja_files=False)
    hf_tok = AutoTokenizer.from_pretrained(out_dir)  # what a user of the directory gets
    vocab = len(hf_tok)
    eos_id = hf_tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = hf_tok.convert_tokens_to_ids("<|endoftext|>")

    model, quantized = build_model(kind, vocab, eos_id, pad_id, std, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    for stale in ("pytorch_model.bin", "chat_template.jinja"):
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()

    # Reload from disk so the reference numbers come from exactly what was written.
    cls = type(model)
    model = cls.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()

    cases = []
    for text in PLAIN_TEXTS:
        cases.append({"name": f"plain{len(cases)}", "kind": "plain", "text": text})
    rendered = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    cases.append({"name": "chat0", "kind": "chat", "messages": CHAT_MESSAGES, "add_generation_prompt": True,
                  "text": rendered})

    for c in cases:
        ids = hf_tok(c["text"], add_special_tokens=True)["input_ids"]
        assert hf_tok.decode(ids) == c["text"], (hf_tok.decode(ids), c["text"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        c["ids"] = ids
        c["tokens"] = hf_tok.convert_ids_to_tokens(ids)
        c["n_tokens"] = len(ids)
        c["argmax"] = logits.argmax(-1).tolist()
        c["logits"] = f32_list(logits)
        c["greedy_ids"], c["greedy_top1_margin"] = greedy(model, ids, N_GREEDY)
        c["greedy_text"] = hf_tok.decode(c["greedy_ids"])

    cfg = model.config
    expected = {
        "description": f"Reference outputs of HF transformers for tiny-{kind} (random weights, int4 fake-quantized). "
                       "logits[i] are the next-token logits after ids[0..=i], float32, eager attention on CPU. "
                       f"greedy_ids: {N_GREEDY} tokens from generate(do_sample=False) without stopping at EOS.",
        "generator": "tools/make_tiny_fixtures.py",
        "seed": seed,
        "init_std": std,
        "arch": cfg.model_type,
        "vocab_size": vocab,
        "add_bos": False,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "special_tokens": {s: hf_tok.convert_tokens_to_ids(s) for s in SPECIALS},
        "quantized_tensors": quantized,
        "quantization": "every 2-D weight: int4 groups of 32 along rows, f16 min and scale (tools/quant.py)",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "tokenizers": __import__("tokenizers").__version__, "numpy": np.__version__},
        "cases": cases,
    }
    with open(out_dir / "expected.json", "w") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    print(f"{out_dir}: vocab {vocab}, " + ", ".join(f"{c['name']}={c['n_tokens']} tok" for c in cases))
    for n, s in sizes.items():
        print(f"  {n:28s} {s:9d}")
    print(f"  total {sum(sizes.values())} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"),
                    help="directory to write tiny-qwen2/ and tiny-llama/ into (default: tests/fixtures)")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    ap.add_argument("--std", type=float, default=0.1, help="std of the random matrices (default 0.1)")
    ap.add_argument("--only", choices=["qwen2", "llama"], help="build only one of the two fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.only in (None, "qwen2"):
        make_fixture("qwen2", out / "tiny-qwen2", 400, args.std, args.seed)
    if args.only in (None, "llama"):
        make_fixture("llama", out / "tiny-llama", 512, args.std, args.seed + 1)


if __name__ == "__main__":
    main()
