#!/usr/bin/env python3
"""Masked-LoRA SFT of a reasoning adapter.

LoRA (r, alpha, dropout configurable) on all seven projections (q/k/v/o/gate/up/down) of a frozen
base model. Each example is

    prompt tokens   = chat template of the user message + assistant header (adapter OFF, no loss)
    response tokens = tokenizer(response, add_special_tokens=False) + eos   (adapter ON, loss)

"Adapter OFF" is the engine's schedule: the prompt is prefilled by the base model and the adapter
only touches generated tokens, so prompt K/V are the base model's (see common.AdapterMask).

Data: JSONL with "prompt" and "response" (tools/train/data.py, or any reasoning-trace set).
Output: a PEFT folder (adapter_config.json + adapter_model.safetensors, f32 or --dtype f16).

One CPU:      python tools/train/sft.py --model DIR --data train.jsonl --out OUT
Several GPUs: accelerate launch tools/train/sft.py ...   (data-parallel; --batch-size is per process)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

import common  # noqa: E402
from data import load_jsonl  # noqa: E402


def encode(tok, items, max_len):
    out = []
    for it in items:
        p = common.chat_prompt_ids(tok, it["prompt"])
        r = common.response_ids(tok, it["response"])
        ids = (p + r)[:max_len]
        if len(ids) <= len(p):
            continue  # nothing of the response left to learn from
        out.append({"ids": ids, "prompt_len": len(p)})
    return out


def collate(batch, pad_id):
    """Right-padded batch: labels -100 on prompt and padding; adapter mask 1 on response only."""
    T = max(len(b["ids"]) for b in batch)
    n = len(batch)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    att = torch.zeros((n, T), dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    amask = torch.zeros((n, T), dtype=torch.float32)
    for i, b in enumerate(batch):
        L, P = len(b["ids"]), b["prompt_len"]
        ids[i, :L] = torch.tensor(b["ids"])
        att[i, :L] = 1
        labels[i, P:L] = ids[i, P:L]
        amask[i, P:L] = 1.0
    return {"input_ids": ids, "attention_mask": att, "labels": labels, "adapter_mask": amask}


def batch_loss(model, batch):
    """Summed cross-entropy over response tokens and their count. Call inside masker(...)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    s = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                          ignore_index=-100, reduction="sum")
    n = (labels != -100).sum()
    return s, n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p)
    p.add_argument("--data", required=True, help="training JSONL (prompt, response)")
    p.add_argument("--difficulty", choices=["hard", "easy", "all"], default="all",
                   help="train on these items only (the reasoning adapter: hard, the items with traces)")
    p.add_argument("--eval-data", default=None, help="held-out JSONL: response loss reported after each epoch")
    p.add_argument("--out", required=True, help="output adapter directory (PEFT format)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16, help="LoRA alpha")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--rslora", action="store_true", help="rank-stabilised scaling alpha/sqrt(r)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=float, default=2, help="passes over the data (fractions allowed)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0 = no cap)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup", type=float, default=0.03, help="linear warmup fraction of the steps")
    p.add_argument("--max-len", type=int, default=1024, help="truncate prompt+response to this many tokens")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="tensor type of the saved adapter")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=0,
                   help="every N steps write the adapter and OUT/trainer_state.pt (optimizer, schedule, step)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT's adapter and trainer_state.pt (same data and flags)")
    p.add_argument("--stop-at", type=int, default=0,
                   help="end the run after this many steps; the learning-rate schedule still spans the whole run")
    p.add_argument("--init-adapter", default=None,
                   help="start from this PEFT adapter's weights (same --r and --alpha) with a fresh optimizer "
                        "and schedule: a second stage on new data")
    a = p.parse_args()
    if a.init_adapter and a.resume:
        p.error("--init-adapter starts a new run; --resume continues one (give one of them)")

    acc = Accelerator(gradient_accumulation_steps=a.grad_accum)
    set_seed(a.seed)
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    base, tok, name = common.load_base(a.model, a.tokenizer, a.fake_quant_int4)
    model = get_peft_model(base, common.lora_config(a.r, a.alpha, a.dropout, a.rslora))
    if a.init_adapter:
        load_adapter_weights(model, a.init_adapter, a.r, a.alpha)
        common.log(acc, f"initialized from {a.init_adapter}")
    masker = common.AdapterMask(model)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    common.log(acc, f"base {name}: LoRA r={a.r} alpha={a.alpha} rslora={a.rslora}, {n_train} trainable parameters")

    def pick(items):
        return [it for it in items if a.difficulty in ("all", it["difficulty"])]

    train = encode(tok, pick(load_jsonl(a.data)), a.max_len)
    evals = encode(tok, pick(load_jsonl(a.eval_data)), a.max_len) if a.eval_data else []
    common.log(acc, f"{len(train)} training examples, {len(evals)} eval examples")
    g = torch.Generator().manual_seed(a.seed)
    dl = torch.utils.data.DataLoader(train, batch_size=a.batch_size, shuffle=True, generator=g,
                                     collate_fn=lambda b: collate(b, tok.pad_token_id))
    edl = torch.utils.data.DataLoader(evals, batch_size=a.batch_size, collate_fn=lambda b: collate(b, tok.pad_token_id))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = math.ceil(len(dl) / max(1, acc.num_processes) / a.grad_accum)
    total = max(1, math.ceil(steps_per_epoch * a.epochs))
    if a.max_steps:
        total = min(total, a.max_steps)
    last = min(total, a.stop_at) if a.stop_at else total
    # accelerate steps a prepared scheduler once per process per optimizer step
    sched = get_linear_schedule_with_warmup(opt, int(a.warmup * total) * acc.num_processes, total * acc.num_processes)
    model, opt, dl, edl, sched = acc.prepare(model, opt, dl, edl, sched)

    step, t0, run_s, run_n = 0, time.time(), 0.0, 0
    state_path = os.path.join(a.out, "trainer_state.pt")
    if a.resume:
        step = resume(acc, model, opt, sched, a.out, state_path)
    # Each epoch's order comes from (seed, epoch), so a resumed run sees the batches the
    # interrupted one would have: skip those of the current epoch already trained on.
    epoch, skip = divmod(step, steps_per_epoch)
    skip *= a.grad_accum
    while step < last:
        model.train()
        g.manual_seed(a.seed + epoch)
        for batch in dl:
            if skip:
                skip -= 1
                continue
            # the mask stays set through backward: gradient checkpointing re-runs the forward there
            with acc.accumulate(model), masker(batch["adapter_mask"]):
                s, n = batch_loss(model, batch)
                loss = s / n.clamp(min=1)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
            run_s += float(s)
            run_n += int(n)
            if acc.sync_gradients:
                step += 1
                if step % a.log_every == 0 or step == last:
                    common.log(acc, f"step {step}/{total} epoch {epoch} loss {run_s / max(run_n, 1):.4f} "
                                    f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s")
                    run_s, run_n = 0.0, 0
                if a.save_every and step % a.save_every == 0 and step < last:
                    checkpoint(acc, model, opt, sched, step, a, state_path)
                if step >= last:
                    break
        epoch += 1
        if evals:
            model.eval()
            es, en = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
            with torch.no_grad():
                for batch in edl:
                    with masker(batch["adapter_mask"]):
                        s, n = batch_loss(model, batch)
                    es += s
                    en += n
            es, en = acc.reduce(es, "sum"), acc.reduce(en, "sum")
            common.log(acc, f"epoch {epoch} eval loss {float(es) / max(float(en), 1):.4f}")

    if last < total:  # stopped early: --resume (with a later --stop-at) goes on from here
        checkpoint(acc, model, opt, sched, step, a, state_path)
    acc.wait_for_everyone()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        path = common.save_adapter(unwrapped, a.out, a.dtype)
        common.log(acc, f"saved adapter -> {path} ({a.dtype})")


def checkpoint(acc, model, opt, sched, step, a, state_path):
    """The adapter so far (a usable PEFT folder) and what --resume needs to go on."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        common.save_adapter(acc.unwrap_model(model), a.out, "f32")
        torch.save({"step": step, "opt": opt.state_dict(), "sched": sched.state_dict()}, state_path)
        common.log(acc, f"checkpoint at step {step} -> {a.out}")


def resume(acc, model, opt, sched, out, state_path) -> int:
    """Load OUT's adapter weights and trainer state; returns the step to continue from."""
    if not os.path.exists(state_path):
        raise SystemExit(f"--resume: no {state_path} (was the run started with --save-every?)")
    load_adapter_weights(acc.unwrap_model(model), out)
    state = torch.load(state_path, weights_only=False)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    common.log(acc, f"resumed from {out} at step {state['step']}")
    return state["step"]


def load_adapter_weights(model, folder, r=None, alpha=None):
    """Copy a saved PEFT adapter's tensors (f16 or f32) into `model`'s LoRA weights. With r and
    alpha given, the folder's adapter_config.json must match them: the shapes and the scale."""
    import json

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    cfg_path = os.path.join(folder, "adapter_config.json")
    if r is not None:
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{cfg_path}: {e}")
        if (cfg.get("r"), float(cfg.get("lora_alpha", -1))) != (r, float(alpha)):
            raise SystemExit(f"{cfg_path}: r={cfg.get('r')} lora_alpha={cfg.get('lora_alpha')}, "
                             f"but this run has --r {r} --alpha {alpha}")
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, {k: v.float() for k, v in weights.items()})
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise SystemExit(f"{folder}: {len(unexpected)} tensors match no LoRA weight of this model, "
                         f"e.g. {unexpected[0]}")


if __name__ == "__main__":
    main()
