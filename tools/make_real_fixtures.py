#!/usr/bin/env python3
"""Reference outputs of HF transformers for the real GGUF models the engine runs.

For each model (qwen2.5-0.5b -> qwen2.5-coder-0.5b-instruct-q4_k_m.gguf,
smollm2-135m -> SmolLM2-135M-Instruct.Q4_1.gguf, both looked up in ~/.cache/edgereason/ unless
--gguf is given) this loads the GGUF with transformers (which dequantizes every tensor to
float32 and, for llama, un-permutes Q/K back to the HF rotate-half layout), then writes
tests/fixtures/real/<name>.json with:

  chat:       a few prompts rendered with the GGUF's chat template (add_generation_prompt=True),
              their token ids and the greedy continuation of 32 new tokens (ids + text),
              generated with EOS stopping disabled (eos_index says where the first EOS fell),
              plus each step's top-1/top-2 logit margin;
  paragraph:  a fixed English paragraph tokenized without a chat template (BOS only if the
              GGUF's tokenizer.ggml.add_bos_token says so), its ids, per position the top-5 next-token ids and
              logits and the NLL of the actual next token, and the mean NLL / perplexity of
              tokens 1..n-1 given their prefixes.

Logits and NLLs are rounded to 4 decimals. Runs on CPU in float32 with one thread by default.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

CACHE = Path.home() / ".cache" / "edgereason"
MODELS = {
    "qwen2.5-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
}

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "What is 17 * 23?",
    "Name three primary colors.",
]

PARAGRAPH = (
    "The water cycle describes how water moves between the oceans, the atmosphere and the land. "
    "Heat from the sun causes water at the surface of oceans, lakes and rivers to evaporate and rise "
    "into the air as water vapor. Plants also release water vapor through their leaves in a process "
    "called transpiration. As the vapor rises, it cools and condenses into tiny droplets that form "
    "clouds. When the droplets combine and grow heavy enough, they fall back to the ground as rain, "
    "snow, sleet or hail. Some of this precipitation flows over the land as runoff and collects in "
    "streams and rivers, which carry it back to the sea. Some of it soaks into the soil and becomes "
    "groundwater, which can remain underground for thousands of years before it reaches the surface "
    "again through springs or wells. In cold regions, water can be stored for long periods as ice in "
    "glaciers and polar ice sheets. The water cycle shapes the weather, supports every living thing "
    "on Earth and slowly changes the landscape through erosion."
)

N_NEW = 32
TOPK = 5


def r4(x: float) -> float:
    return round(float(x), 4)


def gguf_tokenizer_meta(path: Path):
    """The GGUF's own tokenizer settings (what llama.cpp, and the engine, go by)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {}
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
        f = reader.fields.get(key)
        if f is not None:
            meta[key] = f.contents()
    return meta


def stop_ids(tok, meta):
    ids = set()
    if meta.get("tokenizer.ggml.eos_token_id") is not None:
        ids.add(int(meta["tokenizer.ggml.eos_token_id"]))
    for s in ("<|im_end|>", "<|endoftext|>"):
        i = tok.get_vocab().get(s)
        if i is not None:
            ids.add(int(i))
    return sorted(ids)


def greedy(model, ids, n):
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=n, min_new_tokens=0, do_sample=False, num_beams=1, eos_token_id=None,
        pad_token_id=0, repetition_penalty=1.0, temperature=None, top_p=None, top_k=None,
    )
    inp = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc,
                             output_scores=True, return_dict_in_generate=True)
    new = out.sequences[0, len(ids):].tolist()
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2)
        margins.append(r4(top.values[0] - top.values[1]))
    return new, margins


def paragraph_stats(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logits, TOPK, dim=-1)
    nll = [-float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    positions = []
    for i in range(len(ids)):
        p = {"top_ids": top.indices[i].tolist(), "top_logits": [r4(v) for v in top.values[i].tolist()]}
        if i + 1 < len(ids):
            p["next_id"] = ids[i + 1]
            p["next_logit"] = r4(logits[i, ids[i + 1]])
            p["next_nll"] = r4(nll[i])
        positions.append(p)
    mean_nll = sum(nll) / len(nll)
    return positions, mean_nll, math.exp(mean_nll)


def check_llama_qk(gguf_path: Path, model):
    """Compare layer 0's Q/K/V between the raw GGUF (llama.cpp row order) and the HF model.

    llama.cpp's converter permutes Q and K rows per head so that RoPE pairs are adjacent
    (interleaved); transformers must undo that. Returns a small report dict."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    raw = {t.name: t for t in reader.tensors if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")}
    cfg = model.config
    attn = model.model.layers[0].self_attn
    hf = {"blk.0.attn_q.weight": (attn.q_proj.weight, cfg.num_attention_heads),
          "blk.0.attn_k.weight": (attn.k_proj.weight, cfg.num_key_value_heads),
          "blk.0.attn_v.weight": (attn.v_proj.weight, None)}

    def permute(w, n_head):  # what llama.cpp's convert_hf_to_gguf.py does to Q and K
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    report = {}
    for name, (w_hf, n_head) in hf.items():
        t = raw[name]
        w_raw = dequantize(t.data, t.tensor_type).reshape(w_hf.shape).astype(np.float32)
        w = w_hf.detach().float().numpy()
        report[name] = {
            "hf_equals_raw": bool(np.array_equal(w, w_raw)),
            "permuted_hf_equals_raw": bool(n_head is not None and np.array_equal(permute(w, n_head), w_raw)),
        }
    return report


def run_model(name: str, gguf_path: Path, out_dir: Path, check_qk: bool):
    import gguf
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    print(f"[{name}] loaded in {time.time() - t0:.1f}s: {model.config.model_type}, "
          f"vocab {model.config.vocab_size}, tokenizer {len(tok)}", flush=True)

    hf_adds_bos = tok("a", add_special_tokens=True)["input_ids"] != tok("a", add_special_tokens=False)["input_ids"]
    meta = gguf_tokenizer_meta(gguf_path)
    # BOS as the GGUF says (tokenizer.ggml.add_bos_token; absent means llama.cpp's default for the
    # tokenizer model: true for SentencePiece "llama", false for BPE "gpt2"). transformers' GGUF
    # tokenizer conversion does not always follow it (see "transformers_tokenizer" below).
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = meta.get("tokenizer.ggml.model") == "llama"
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    result = {
        "model": name,
        "gguf_file": f,
        "gguf_size_bytes": gguf_path.stat().st_size,
        "generator": "tools/make_real_fixtures.py",
        "description": "HF transformers reference: GGUF dequantized to float32, CPU, eager math. "
                       "chat[*].greedy_ids: 32 new tokens from generate(do_sample=False) with EOS stopping "
                       "disabled; eos_index is the index in greedy_ids of the first EOS (null if none); "
                       "greedy_text decodes up to (excluding) that EOS. paragraph.positions[i] describes the "
                       "next-token logits after ids[0..=i]; logits and NLLs rounded to 4 decimals; mean_nll / "
                       "perplexity average over predicting ids[1..] from their prefixes.",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
                     "tokenizers": _dist_version("tokenizers")},
        "config": {k: getattr(model.config, k, None) for k in (
            "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "rope_theta", "rms_norm_eps",
            "max_position_embeddings", "tie_word_embeddings")},
        "gguf_tokenizer_metadata": meta,
        "tokenizer": {"len": len(tok), "add_bos": bool(add_bos), "bos_token_id": bos_id,
                      "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
                      "stop_ids": stop_ids(tok, meta), "chat_template": tok.chat_template},
        "transformers_tokenizer": {"class": type(tok).__name__, "bos_token": tok.bos_token,
                                   "bos_token_id": tok.bos_token_id, "eos_token": tok.eos_token,
                                   "eos_token_id": tok.eos_token_id, "adds_bos_by_default": hf_adds_bos,
                                   "pre_tokenizer": str(tok.backend_tokenizer.pre_tokenizer),
                                   "normalizer": str(tok.backend_tokenizer.normalizer)},
    }
    stops = set(result["tokenizer"]["stop_ids"])

    chats = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already has any BOS it wants: encode the rendered text without adding more.
        ids = tok(text, add_special_tokens=False)["input_ids"]
        t1 = time.time()
        new, margins = greedy(model, ids, N_NEW)
        eos_index = next((i for i, t in enumerate(new) if t in stops), None)
        chats.append({
            "messages": messages, "add_generation_prompt": True, "prompt_text": text,
            "prompt_ids": ids, "n_prompt_tokens": len(ids),
            "greedy_ids": new, "greedy_top1_margin": margins, "eos_index": eos_index,
            "greedy_text": tok.decode(new[:eos_index] if eos_index is not None else new),
            "greedy_text_all": tok.decode(new),
        })
        print(f"[{name}] {prompt!r} -> {chats[-1]['greedy_text']!r} ({time.time() - t1:.1f}s)", flush=True)
    result["chat"] = chats

    ids = tok(PARAGRAPH, add_special_tokens=False)["input_ids"]
    if add_bos and bos_id is not None:
        ids = [int(bos_id)] + ids
    positions, mean_nll, ppl = paragraph_stats(model, ids)
    result["paragraph"] = {"text": PARAGRAPH, "bos_prepended": bool(add_bos and bos_id is not None), "ids": ids, "n_tokens": len(ids),
                           "mean_nll": round(mean_nll, 6), "perplexity": round(ppl, 4), "positions": positions}
    print(f"[{name}] paragraph: {len(ids)} tokens, mean NLL {mean_nll:.4f}, perplexity {ppl:.3f}", flush=True)

    if check_qk and model.config.model_type == "llama":
        result["qk_unpermute_check"] = check_llama_qk(gguf_path, model)
        print(f"[{name}] Q/K check: {result['qk_unpermute_check']}", flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    with open(path, "w") as fh:
        json.dump(result, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"[{name}] wrote {path} ({path.stat().st_size} bytes) in {time.time() - t0:.1f}s", flush=True)


def _dist_version(pkg):
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), action="append",
                    help="model(s) to run (default: all)")
    ap.add_argument("--gguf", type=Path, help="path of the GGUF file (only with a single --model)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real",
                    help="output directory (default tests/fixtures/real)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-qk-check", action="store_true", help="skip comparing llama Q/K with the raw GGUF")
    args = ap.parse_args()
    names = args.model or sorted(MODELS)
    if args.gguf and len(names) != 1:
        ap.error("--gguf needs exactly one --model")
    torch.set_num_threads(args.threads)
    for name in names:
        path = args.gguf if args.gguf else CACHE / MODELS[name]
        if not path.exists():
            sys.exit(f"{path}: not found")
        run_model(name, path, args.out, not args.no_qk_check)


if __name__ == "__main__":
    main()
