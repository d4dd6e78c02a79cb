#!/usr/bin/env python3
"""Train the reasoning switcher: decides per prompt whether to turn the reasoning adapter on.

Feature: mean over the prompt's tokens of the base model's final-norm hidden state
(`last_hidden_state`, no adapter) for the chat-templated user message (no budget statement).
Model: Linear(d,8) -> ReLU -> Dropout(0.2) -> Linear(8,1); during training Gaussian noise
(sigma --noise, default 0.5) is added to the pooled input. Loss: BCE with labels hard=1, easy=0
(the "difficulty" field of the JSONL). The probability threshold is the one with the best
accuracy on a validation split carved from the training data (--val-frac); the engine turns
reasoning ON iff sigmoid(output) >= threshold.

Output: switcher.safetensors in the engine's format (fc1.weight [8,d], fc1.bias [8],
fc2.weight [1,8], fc2.bias [1], f32; metadata format=edgereason-switcher-v1, hidden_size,
threshold, ema_alpha=0.5, base_model). For chunked prefill the engine pools with an EMA of chunk
means (alpha 0.5); training uses the plain mean.

Feature extraction is split across processes under `accelerate launch`; the MLP trains on the
main process (it is tiny).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import gather_object, set_seed  # noqa: E402

import common  # noqa: E402
from data import load_jsonl  # noqa: E402


def pooled_features(model, tok, items, acc, log_every=100):
    """[n, d] mean-pooled base-model features, in the order of items (gathered over processes)."""
    idx = list(range(len(items)))[acc.process_index:: acc.num_processes]
    feats, t0 = [], time.time()
    for j, i in enumerate(idx):
        ids = common.chat_prompt_ids(tok, items[i]["prompt"])
        h = common.last_hidden(model, ids, None, None)
        feats.append((i, h.mean(0).cpu().numpy()))
        if (j + 1) % log_every == 0:
            common.log(acc, f"  features {j + 1}/{len(idx)} ({time.time() - t0:.0f}s)")
    allf = sorted(gather_object(feats), key=lambda x: x[0])
    return np.stack([f for _, f in allf]).astype(np.float32)


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold with the highest accuracy (ties: closest to 0.5)."""
    cands = np.unique(np.concatenate([probs, [0.5]]))
    best = max(cands, key=lambda t: (((probs >= t) == labels).mean(), -abs(t - 0.5)))
    return float(best)


def train_mlp(x, y, a, log):
    """Full-batch Adam on the noisy pooled features."""
    g = torch.Generator().manual_seed(a.seed)
    net = common.Switcher(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    pos = max(float(yt.sum()), 1.0)
    pw = torch.tensor((len(yt) - pos) / pos)  # balance classes
    for ep in range(1, a.epochs + 1):
        net.train()
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), a.batch_size):
            b = perm[s: s + a.batch_size]
            noisy = xt[b] + a.noise * torch.randn(xt[b].shape, generator=g)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(noisy), yt[b], pos_weight=pw)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep % max(1, a.epochs // 10) == 0 or ep == a.epochs:
            log(f"  epoch {ep}/{a.epochs} loss {float(loss):.4f}")
    return net.eval()


def predict(net, x):
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(x))).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p)
    p.add_argument("--data", required=True, help="training JSONL with prompt + difficulty (hard/easy)")
    p.add_argument("--test-data", default=None, help="held-out JSONL: accuracy reported at the chosen threshold")
    p.add_argument("--out", required=True, help="output file (switcher.safetensors)")
    p.add_argument("--val-frac", type=float, default=0.2, help="fraction of --data used to choose the threshold")
    p.add_argument("--noise", type=float, default=0.5, help="Gaussian noise sigma on the pooled input in training")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    a = p.parse_args()

    acc = Accelerator()
    set_seed(a.seed)
    base, tok, name = common.load_base(a.model, a.tokenizer, a.fake_quant_int4)
    base = base.to(acc.device).eval()
    items = load_jsonl(a.data)
    random.Random(a.seed).shuffle(items)
    tests = load_jsonl(a.test_data) if a.test_data else []
    common.log(acc, f"base {name}: pooling features of {len(items)} train + {len(tests)} test prompts")
    x = pooled_features(base, tok, items, acc)
    y = np.array([it["difficulty"] == "hard" for it in items], np.float32)
    xt = pooled_features(base, tok, tests, acc) if tests else None
    if not acc.is_main_process:
        return
    n_val = max(1, int(round(len(items) * a.val_frac))) if len(items) > 1 else 0
    xv, yv, xtr, ytr = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if len(set(ytr.tolist())) < 2:
        print("warning: the training split has only one class", flush=True)
    print(f"training MLP on {len(xtr)} prompts ({int(ytr.sum())} hard), validation {len(xv)}", flush=True)
    net = train_mlp(xtr, ytr, a, lambda m: print(m, flush=True))
    pv = predict(net, xv) if n_val else np.zeros(0)
    thr = best_threshold(pv, yv) if n_val else 0.5
    val_acc = float(((pv >= thr) == yv).mean()) if n_val else float("nan")
    print(f"threshold {thr:.4f}: validation accuracy {val_acc:.3f}, AUC {common.binary_auc(pv, yv):.3f}", flush=True)
    if xt is not None:
        yt = np.array([it["difficulty"] == "hard" for it in tests], np.float32)
        pt = predict(net, xt)
        print(f"test accuracy {float(((pt >= thr) == yt).mean()):.3f}, AUC {common.binary_auc(pt, yt):.3f} "
              f"({len(tests)} prompts)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    common.save_switcher(a.out, net, thr, name)
    print(f"saved switcher -> {a.out}", flush=True)


if __name__ == "__main__":
    main()
