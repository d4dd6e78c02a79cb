#!/usr/bin/env python3
"""Write LoRA adapter fixtures (plus HF+PEFT reference logits) for the engine's Rust tests.

Under --out it writes two PEFT adapters for the base model (default tests/fixtures/tiny-qwen2):

  lora/         r=4, lora_alpha=8, use_rslora=false (scale alpha/r = 2),       tensors f32
  lora-rslora/  r=4, lora_alpha=8, use_rslora=true  (scale alpha/sqrt(r) = 4), tensors f16

each with adapter_config.json, adapter_model.safetensors and expected.json. LoRA is on all seven
projections (q/k/v/o/gate/up/down); lora_A and lora_B are both random N(0, --std) (lora_B is
deliberately non-zero, unlike PEFT's default init). For the f16 variant the weights are rounded to
f16 before the reference logits are computed, so the file holds exactly the numbers used.

expected.json:
  {"tokens": [...],            token ids: chat-templated prompt + a response
   "prompt_len": P,            length of the chat-templated prompt
   "logits_full": [[...]],     adapter on at every position           [len(tokens), vocab]
   "logits_masked": [[...]],   adapter off for positions < P, on after [len(tokens), vocab]
   "logits_base": [[...]],     no adapter (the base model)             [len(tokens), vocab]
   "r", "lora_alpha", "use_rslora", "scaling", "prompt", "response"}
logits[i] = next-token logits after tokens[0..=i]; float32, eager attention, CPU, written as the
shortest decimals that read back as the same f32. logits_masked[:P] equals logits_base[:P].
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

PROMPT = "What is 2 + 3 * 4?"
RESPONSE = "<think>\n3 * 4 = 12, and 2 + 12 = 14.\n</think>\n\nFinal answer: \\boxed{14}"
VARIANTS = [("lora", False, "f32"), ("lora-rslora", True, "f16")]


def f32_list(t: torch.Tensor):
    """Float32 values as the shortest decimals that read back as the same float32."""
    return [[float(str(x)) for x in row] for row in t.detach().to(torch.float32).numpy()]


@torch.no_grad()
def make(base_dir: str, out: Path, rslora: bool, dtype: str, std: float, seed: int, r: int = 4, alpha: int = 8):
    from peft import get_peft_model

    base, tok, _ = common.load_base(base_dir)
    base.eval()
    tokens = common.chat_prompt_ids(tok, PROMPT) + common.response_ids(tok, RESPONSE)
    P = len(common.chat_prompt_ids(tok, PROMPT))
    ids = torch.tensor([tokens])
    logits_base = base(input_ids=ids).logits[0]

    model = get_peft_model(base, common.lora_config(r, alpha, 0.0, rslora, init_weights=False)).eval()
    g = torch.Generator().manual_seed(seed)
    for name, prm in sorted(model.named_parameters()):
        if "lora_" in name:
            w = torch.randn(prm.shape, generator=g) * std
            if dtype == "f16":
                w = w.half().float()  # the saved f16 numbers are exactly the ones used here
            prm.copy_(w)
    masker = common.AdapterMask(model)
    logits_full = model(input_ids=ids).logits[0]
    mask = torch.ones(ids.shape)
    mask[:, :P] = 0
    with masker(mask):
        logits_masked = model(input_ids=ids).logits[0]
    assert torch.equal(logits_masked[:P], logits_base[:P])
    assert not torch.allclose(logits_full[P:], logits_base[P:], atol=1e-3)

    out.mkdir(parents=True, exist_ok=True)
    common.save_adapter(model, str(out), dtype)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = Path(base_dir).name  # no machine-specific paths in fixtures
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    expected = {"tokens": tokens, "prompt_len": P, "r": r, "lora_alpha": alpha, "use_rslora": rslora,
                "scaling": scaling, "dtype": dtype, "prompt": PROMPT, "response": RESPONSE,
                "logits_full": f32_list(logits_full), "logits_masked": f32_list(logits_masked),
                "logits_base": f32_list(logits_base)}
    with open(out / "expected.json", "w") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
    d_full = float((logits_full - logits_base).abs().max())
    print(f"{out}: {len(tokens)} tokens, prompt_len {P}, scaling {scaling}, {dtype}; "
          f"max |full - base| {d_full:.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tests/fixtures/tiny-qwen2", help="base HF directory")
    p.add_argument("--out", required=True, help="output directory (gets lora/ and lora-rslora/)")
    p.add_argument("--std", type=float, default=0.1, help="std of the random lora_A / lora_B entries")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    for i, (sub, rslora, dtype) in enumerate(VARIANTS):
        make(a.model, Path(a.out) / sub, rslora, dtype, a.std, a.seed + i)


if __name__ == "__main__":
    main()
