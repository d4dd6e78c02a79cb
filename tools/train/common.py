"""Shared pieces of the training pipeline: base-model loading, masked LoRA, sampling, rewards and
the export formats the Rust engine reads (see tools/train/README.md).

Masked LoRA: the engine runs the prompt through the *base* model and switches the reasoning
adapter on only for generated tokens (so the prompt's KV cache can be shared with the base model
and the switcher). Training must see the same thing: `AdapterMask` hooks every PEFT `lora_B`
module and multiplies its output (the LoRA delta before scaling) by a per-token 0/1 mask. With
the mask 0 at prompt positions, the prompt's hidden states and K/V are exactly the base model's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/ for quant.py
from quant import fake_quant_int4  # noqa: E402

# The seven projections that get LoRA (and int4 fake-quantization).
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

BUDGET_TEMPLATE = "\n(Reasoning budget: {B} tokens.)"
FORCE_ANSWER = "</think>\n\nFinal answer:"  # what the engine injects when a budget runs out
VERIFIER_PROMPT = "\nIs this solution correct? Answer yes or no:"
# The engine feeds this after the prompt in reasoning mode (GenerateParams::think_prefix): with the
# adapter off on the prompt, the first reply token would otherwise be the base model's choice.
THINK_PREFIX = "<think>\n"
SWITCHER_FORMAT = "edgereason-switcher-v1"
VERIFIER_FORMAT = "edgereason-verifier-v1"


def log(accelerator, *msg):
    """Print once (main process) and flush, so progress shows up under `accelerate launch` too."""
    if accelerator is None or accelerator.is_main_process:
        print(*msg, flush=True)


# ----------------------------------------------------------------------------- model loading


def add_model_args(p):
    p.add_argument("--model", required=True,
                   help="base model: an HF directory, or a .gguf file (transformers dequantizes it)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory if not the model's own")
    p.add_argument("--fake-quant-int4", action="store_true",
                   help="replace the q/k/v/o/gate/up/down weights by their int4 round trip "
                        "(tools/quant.py, the engine's group-32 layout) so training sees the engine's weights")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def load_base(model_path: str, tokenizer_path: str | None = None, fake_quant: bool = False,
              dtype=torch.float32):
    """Return (frozen model, tokenizer, display name). GGUF files are dequantized by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_path)
    kw = {}
    if path.suffix == ".gguf":
        kw["gguf_file"] = path.name
        path = path.parent
    # eager attention: identical numbers on CPU and GPU runs, and what the fixtures use
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager", **kw)
    if tokenizer_path:
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
    else:
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
    if kw and tok.chat_template and "<|im_end|>" in tok.chat_template and tok.eos_token != "<|im_end|>":
        # transformers 4.57's GGUF loader reads SmolLM2's end of sequence as <|im_start|>; an
        # adapter trained on that ends its replies by opening a new turn. End them as the chat
        # template does.
        print(f"GGUF tokenizer: end of sequence {tok.eos_token!r} -> '<|im_end|>' (the chat template's)", flush=True)
        tok.eos_token = "<|im_end|>"
        model.generation_config.eos_token_id = tok.eos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.requires_grad_(False)
    if fake_quant:
        n = fake_quantize_projections(model)
        print(f"fake-quantized {n} projection matrices to int4 (group 32)", flush=True)
    name = Path(model_path).name
    return model, tok, name


@torch.no_grad()
def fake_quantize_projections(model) -> int:
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in PROJECTIONS:
            w = mod.weight.detach().to(torch.float32).cpu().numpy()
            mod.weight.copy_(torch.from_numpy(fake_quant_int4(w)).to(mod.weight.dtype))
            n += 1
    return n


def lora_config(r=8, alpha=16, dropout=0.0, rslora=False, init_weights=True):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(PROJECTIONS),
                      use_rslora=rslora, bias="none", task_type="CAUSAL_LM", init_lora_weights=init_weights)


def decoder(model):
    """The transformer body (embeddings .. final norm) of a CausalLM, PEFT-wrapped or not.
    Its `last_hidden_state` is after the final norm. LoRA layers live inside it, so the adapter
    (and the mask hooks) apply when it is called directly."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.get_decoder()


# ----------------------------------------------------------------------------- masked LoRA


class AdapterMask:
    """Per-token on/off switch for every LoRA delta of a PEFT model.

        masker = AdapterMask(peft_model)
        with masker(mask):            # mask [batch, seq]: 1 = adapter on, 0 = off
            out = peft_model(input_ids)

    Outside a `with` (mask None) the adapter is on everywhere, as in plain PEFT. With the adapter
    disabled (`peft_model.disable_adapter()`) PEFT skips lora_B entirely and the hooks do nothing.
    """

    def __init__(self, model):
        from peft.tuners.lora import LoraLayer

        self.mask = None
        self.handles = []
        for mod in model.modules():
            if isinstance(mod, LoraLayer):
                for b in mod.lora_B.values():
                    self.handles.append(b.register_forward_hook(self._hook))
        if not self.handles:
            raise ValueError("AdapterMask: the model has no LoRA layers")

    def _hook(self, module, inputs, output):
        if self.mask is None:
            return output
        if tuple(self.mask.shape) != tuple(output.shape[:-1]):
            raise RuntimeError(f"adapter mask shape {tuple(self.mask.shape)} does not match tokens {tuple(output.shape[:-1])}")
        return output * self.mask.unsqueeze(-1).to(device=output.device, dtype=output.dtype)

    @contextlib.contextmanager
    def __call__(self, mask):
        prev, self.mask = self.mask, mask
        try:
            yield
        finally:
            self.mask = prev

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def maybe_mask(masker, mask):
    return masker(mask) if masker is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- tokens


def chat_prompt_ids(tok, text: str) -> list[int]:
    """The engine's prompt: the chat-templated user message with the assistant header."""
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def response_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def opener_ids(tok, text: str = THINK_PREFIX) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def budget_prompt(prompt: str, budget: int | None) -> str:
    return prompt if not budget else prompt + BUDGET_TEMPLATE.format(B=budget)


def stop_ids(tok, model=None) -> set[int]:
    ids = {tok.eos_token_id}
    gc = getattr(model, "generation_config", None) if model is not None else None
    e = getattr(gc, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif e:
        ids.update(e)
    return {i for i in ids if i is not None}


@torch.no_grad()
def sample(model, prompt_ids: list[int], n: int, max_new_tokens: int, temperature: float, stop: set[int],
           masker: AdapterMask | None = None, generator: torch.Generator | None = None,
           opener: list[int] = ()) -> list[list[int]]:
    """Sample n continuations of one prompt with a KV cache: the prompt is prefilled with the
    adapter off (mask 0), every generated token runs with it on (mask 1) - the engine's schedule.
    `opener` tokens are fed (not sampled) first, with the adapter on, and start every returned
    list (the engine's think prefix). Each list ends with its stop token if one was produced (else
    it hit max_new_tokens, which counts the opener). temperature 0 = greedy."""
    dev = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * n, device=dev)
    with maybe_mask(masker, torch.zeros(ids.shape, device=dev)):
        out = model(input_ids=ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :].float()
    if opener:
        op = torch.tensor([list(opener)] * n, device=dev)
        with maybe_mask(masker, torch.ones(op.shape, device=dev)):
            out = model(input_ids=op, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :].float()
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    seqs = [list(opener) for _ in range(n)]
    max_new_tokens -= len(opener)
    stop_t = torch.tensor(sorted(stop), device=dev)
    ones = torch.ones((n, 1), device=dev)
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(dev)
        else:
            nxt = logits.argmax(-1)
        for i in range(n):
            if not done[i]:
                seqs[i].append(int(nxt[i]))
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        with maybe_mask(masker, ones):
            out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :].float()
    return seqs


def strip_stop(seq: list[int], stop: set[int]) -> list[int]:
    return seq[:-1] if seq and seq[-1] in stop else seq


@torch.no_grad()
def last_hidden(model, ids: list[int], adapter_from: int | None, masker: AdapterMask | None):
    """Final-norm hidden states [seq, d] of one sequence. adapter_from = first position with the
    adapter on (None: run without touching the mask, e.g. a base model)."""
    dev = next(model.parameters()).device
    t = torch.tensor([ids], device=dev)
    ctx = contextlib.nullcontext()
    if masker is not None and adapter_from is not None:
        m = torch.zeros(t.shape, device=dev)
        m[:, adapter_from:] = 1
        ctx = masker(m)
    with ctx:
        h = decoder(model)(input_ids=t).last_hidden_state
    return h[0].float()


# ----------------------------------------------------------------------------- answers, rewards

_BOXED = "\\boxed{"


def extract_answer(text: str) -> str | None:
    """The final answer, as the engine's vote extracts it (src/sched/vote.rs; the shared table
    is tests/fixtures/spec/answers.json): the last \\boxed{...} (braces may nest); else the
    phrase after the last "answer is" (to the end of its line or sentence); else the last
    number; else None."""
    start = text.rfind(_BOXED)
    if start >= 0:
        i, depth = start + len(_BOXED), 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j]
    said = list(re.finditer(r"answer is", text, re.IGNORECASE))
    if said:
        rest = text[said[-1].end():].lstrip(": ")
        end = rest.find("\n") if "\n" in rest else len(rest)
        for stop in (". ", "! ", "? ", ", ", "; "):
            k = rest.find(stop)
            if k >= 0:
                end = min(end, k)
        ans = rest[:end].strip().rstrip(".:").strip()
        if ans:
            return ans
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1] if nums else None


def normalize_answer(s: str) -> str:
    """Canonical form for comparing answers (the engine's `normalize`)."""
    s = s.strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip().lower()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = re.sub(r"^(the|a|an)\s+", "", s)
    s = re.sub(r"\s+", " ", s)
    num = s.replace(",", "")
    if "_" in num:  # float() reads 1_000; the engine does not
        return s
    try:
        v = float(num)
        return str(int(v)) if v == int(v) else repr(v)
    except (ValueError, OverflowError):
        return s


def is_correct(generated: str, answer: str) -> bool:
    got = extract_answer(generated)
    return got is not None and normalize_answer(got) == normalize_answer(answer)


def budget_reward(length: int, budget: float, margin: float = 0.2, floor: float = 0.0) -> float:
    """R_budget(L): 1 for L <= (1-m)B, linear down to p at (1+m)B, p beyond."""
    lo, hi = (1.0 - margin) * budget, (1.0 + margin) * budget
    if length <= lo:
        return 1.0
    if length >= hi:
        return floor
    return 1.0 - (1.0 - floor) * (length - lo) / (hi - lo)


# ----------------------------------------------------------------------------- export


def save_adapter(model, out_dir: str, dtype: str = "f32"):
    """PEFT folder (adapter_config.json + adapter_model.safetensors), tensors in f32 or f16."""
    model.save_pretrained(out_dir, safe_serialization=True)
    path = os.path.join(out_dir, "adapter_model.safetensors")
    want = {"f32": torch.float32, "f16": torch.float16}[dtype]
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    sd = load_file(path)
    save_file({k: v.to(want).contiguous() for k, v in sd.items()}, path, metadata=meta or {"format": "pt"})
    return path


class Switcher(torch.nn.Module):
    """Linear(d,8) -> ReLU -> Dropout(0.2) -> Linear(8,1); output is a logit (hard = reasoning on)."""

    def __init__(self, d: int, hidden: int = 8, dropout: float = 0.2):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x)))).squeeze(-1)


class Verifier(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = torch.nn.Linear(d, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def _f32(sd):
    return {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in sd.items()}


def save_switcher(path: str, net: Switcher, threshold: float, base_model: str, ema_alpha: float = 0.5):
    sd = _f32(net.state_dict())
    d = sd["fc1.weight"].shape[1]
    save_file(sd, path, metadata={"format": SWITCHER_FORMAT, "hidden_size": str(d), "threshold": repr(float(threshold)),
                                  "ema_alpha": repr(float(ema_alpha)), "base_model": base_model})


def load_switcher(path: str):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    if meta.get("format") != SWITCHER_FORMAT:
        raise ValueError(f"{path}: not an {SWITCHER_FORMAT} file")
    sd = load_file(path)
    net = Switcher(int(meta["hidden_size"]))
    net.load_state_dict(sd)
    return net.eval(), meta


def save_verifier(path: str, net: Verifier, base_model: str, prompt: str = VERIFIER_PROMPT):
    sd = _f32(net.state_dict())
    d = sd["linear.weight"].shape[1]
    save_file(sd, path, metadata={"format": VERIFIER_FORMAT, "hidden_size": str(d), "prompt": prompt,
                                  "base_model": base_model})


def load_verifier(path: str):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    if meta.get("format") != VERIFIER_FORMAT:
        raise ValueError(f"{path}: not an {VERIFIER_FORMAT} file")
    net = Verifier(int(meta["hidden_size"]))
    net.load_state_dict(load_file(path))
    return net.eval(), meta


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (nan when only one class is present)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))
