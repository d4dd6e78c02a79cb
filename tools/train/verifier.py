#!/usr/bin/env python3
"""Train the answer verifier used for best-of-N selection.

1. For each training prompt, sample --samples candidates with the reasoning adapter (adapter off
   on the chat prompt, on for generated tokens) and label each by correctness (the last
   \\boxed{...}, else last number, against the item's answer).
2. Feature of a candidate: the final-norm hidden state at the last token of
       chat-templated prompt tokens + generated tokens (without the stop token)
       + tokenizer(--prompt, add_special_tokens=False) tokens
   (token lists concatenated, never re-tokenised as one string), computed WITH the adapter active
   on the generated and verification tokens and off on the chat prompt - the engine appends the
   verification prompt to the candidate's KV cache.
3. Linear(d,1) + sigmoid trained with BCE (classes balanced by pos_weight).

Output: verifier.safetensors in the engine's format (linear.weight [1,d], linear.bias [1], f32;
metadata format=edgereason-verifier-v1, hidden_size, prompt, base_model). Score = sigmoid(linear(h)).

Sampling and features are split across processes under `accelerate launch`; the linear probe
trains on the main process.

With --candidates, step 1 is the engine's: the candidates are read from `edgereason eval
--best-of N --reasoning on --json` reports (their `candidate_tokens`: the think opener first, no
stop token, exactly what the engine scores), so PyTorch only computes features. Sampling a 0.5B
model in PyTorch on a CPU takes minutes per prompt; the engine decodes the candidates of many
prompts in one batch.
"""

from __future__ import annotations

import argparse
import json
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


def verifier_input(prompt_ids, gen_ids, verify_ids):
    """Token sequence and the first position with the adapter on."""
    return prompt_ids + gen_ids + verify_ids, len(prompt_ids)


def candidate_features(model, masker, tok, items, a, acc, stop, verify_ids):
    """[(features [d], label, prompt)] for this process's share of items, gathered over processes."""
    gen = torch.Generator().manual_seed(a.seed * 1000 + acc.process_index)
    mine = items[acc.process_index:: acc.num_processes]
    rows, t0 = [], time.time()
    for j, it in enumerate(mine):
        pids = common.chat_prompt_ids(tok, common.budget_prompt(it["prompt"], a.budget))
        seqs = common.sample(model, pids, a.samples, a.max_new_tokens, a.temperature, stop, masker, gen,
                             common.opener_ids(tok, a.think_prefix))
        for s in seqs:
            g = common.strip_stop(s, stop)
            ok = common.is_correct(tok.decode(g), it["answer"])
            ids, on_from = verifier_input(pids, g, verify_ids)
            h = common.last_hidden(model, ids, on_from, masker)[-1]
            rows.append((h.cpu().numpy(), float(ok), it["prompt"]))
        if (j + 1) % a.log_every == 0:
            common.log(acc, f"  prompts {j + 1}/{len(mine)} ({time.time() - t0:.0f}s)")
    return gather_object(rows)


def report_candidates(reports, is_correct, decode):
    """[(prompt, candidate tokens, label)] from `edgereason eval --json` reports; items without
    `candidate_tokens` (reports from engines before them) are an error, not silently skipped."""
    out = []
    for path in reports:
        with open(path) as f:
            report = json.load(f)
        for n, item in enumerate(report["items"]):
            if "candidate_tokens" not in item:
                raise ValueError(f"{path}: items[{n}] has no candidate_tokens (re-run the eval with this engine)")
            if not item.get("reasoning", True):
                raise ValueError(f"{path}: items[{n}] was decoded without the adapter (run the eval with --reasoning on)")
            for toks in item["candidate_tokens"]:
                out.append((item["prompt"], list(toks), float(is_correct(decode(toks), item["expected"]))))
    return out


def report_features(model, masker, tok, cands, a, acc, verify_ids):
    """[(features [d], label, prompt)] for this process's share of engine candidates, gathered."""
    rows, t0 = [], time.time()
    mine = cands[acc.process_index:: acc.num_processes]
    for j, (prompt, gen, label) in enumerate(mine):
        pids = common.chat_prompt_ids(tok, common.budget_prompt(prompt, a.budget))
        ids, on_from = verifier_input(pids, gen, verify_ids)
        rows.append((common.last_hidden(model, ids, on_from, masker)[-1].cpu().numpy(), label, prompt))
        if (j + 1) % (a.log_every * a.samples) == 0:
            common.log(acc, f"  candidates {j + 1}/{len(mine)} ({time.time() - t0:.0f}s)")
    return gather_object(rows)


def split_by_prompt(prompts, val_frac, seed):
    """(validation, training) row indices with every prompt's candidates on one side: candidates
    of one prompt are often the same reply, so a split by row would validate on training rows."""
    groups = sorted(set(prompts))
    np.random.default_rng(seed).shuffle(groups)
    val = set(groups[: int(round(len(groups) * val_frac))])
    vi = np.array([i for i, p in enumerate(prompts) if p in val], dtype=np.int64)
    ti = np.array([i for i, p in enumerate(prompts) if p not in val], dtype=np.int64)
    return vi, ti


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p)
    p.add_argument("--adapter", required=True, help="reasoning adapter (PEFT dir), e.g. the GRPO output")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL with prompt + answer: candidates sampled here, by PyTorch")
    src.add_argument("--candidates", nargs="+", metavar="REPORT",
                     help="`edgereason eval --best-of N --reasoning on --json` reports: the engine's candidates")
    p.add_argument("--difficulty", choices=["hard", "easy", "all"], default="hard", help="which items to use")
    p.add_argument("--n-prompts", type=int, default=500, help="training prompts to sample candidates for")
    p.add_argument("--samples", type=int, default=4, help="candidates per prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--budget", type=int, default=0, help="append the budget statement with this B (0 = none)")
    p.add_argument("--prompt", default=common.VERIFIER_PROMPT, help="verification text appended to each candidate")
    p.add_argument("--think-prefix", default=common.THINK_PREFIX,
                   help="fed after the prompt before sampling, as the engine does in reasoning mode ('' = none)")
    p.add_argument("--out", required=True, help="output file (verifier.safetensors)")
    p.add_argument("--val-frac", type=float, default=0.2, help="held-out fraction of candidates for reporting")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, nargs="+", default=[1e-4],
                   help="Adam weight decay; several: chosen by cross-validation over the training prompts")
    p.add_argument("--features", help="an .npz of the candidates' features: written after computing them, "
                                      "read instead of computing when it exists (to retrain the probe only)")
    p.add_argument("--log-every", type=int, default=25)
    a = p.parse_args()

    acc = Accelerator()
    set_seed(a.seed)
    if a.features and Path(a.features).exists():
        f = np.load(a.features)
        print(f"features from {a.features}", flush=True)
        if acc.is_main_process:
            train_and_save(list(zip(f["x"], f["y"], f["prompts"].tolist())), a, Path(a.model).name)
        return
    from peft import PeftModel

    base, tok, name = common.load_base(a.model, a.tokenizer, a.fake_quant_int4)
    model = PeftModel.from_pretrained(base, a.adapter).to(acc.device).eval()
    model.float()  # an f16-saved adapter computes in f32 like the base
    masker = common.AdapterMask(model)
    stop = common.stop_ids(tok, base)
    verify_ids = tok(a.prompt, add_special_tokens=False)["input_ids"]
    if a.candidates:
        cands = report_candidates(a.candidates, common.is_correct, tok.decode)
        common.log(acc, f"base {name}, adapter {a.adapter}: {len(cands)} engine candidates from {len(a.candidates)} report(s)")
        rows = report_features(model, masker, tok, cands, a, acc, verify_ids)
    else:
        items = [it for it in load_jsonl(a.data, need_answer=True) if a.difficulty in ("all", it["difficulty"])]
        random.Random(a.seed).shuffle(items)
        items = items[: a.n_prompts]
        common.log(acc, f"base {name}, adapter {a.adapter}: {len(items)} prompts x {a.samples} candidates")
        rows = candidate_features(model, masker, tok, items, a, acc, stop, verify_ids)
    if not acc.is_main_process:
        return
    if a.features:
        np.savez(a.features, x=np.stack([r[0] for r in rows]), y=np.array([r[1] for r in rows]),
                 prompts=np.array([r[2] for r in rows]))
    train_and_save(rows, a, name)


def train_and_save(rows, a, name):
    """The probe on `rows` [(features, label, prompt)]: weight decay chosen by grouped
    cross-validation over the training prompts, reported on the held-out prompts, saved."""
    x = np.stack([r[0] for r in rows]).astype(np.float32)
    y = np.array([r[1] for r in rows], np.float32)
    prompts = [r[2] for r in rows]
    print(f"{len(y)} candidates, {int(y.sum())} correct ({y.mean():.3f})", flush=True)
    if len(set(y.tolist())) < 2:
        print("warning: all candidates have the same label; the probe only learns the base rate", flush=True)
    vi, ti = split_by_prompt(prompts, a.val_frac, a.seed)
    wd = a.weight_decay[0]
    if len(a.weight_decay) > 1:
        cv = {w: cross_validated_auc(x[ti], y[ti], [prompts[i] for i in ti], w, a) for w in a.weight_decay}
        print("  cross-validated AUC by weight decay: " + ", ".join(f"{w:g}: {v:.3f}" for w, v in cv.items()),
              flush=True)
        wd = max(cv, key=lambda w: np.nan_to_num(cv[w], nan=-1.0))
    net = fit_probe(x[ti], y[ti], wd, a)
    if len(vi):
        with torch.no_grad():
            pv = torch.sigmoid(net(torch.from_numpy(x[vi]))).numpy()
        print(f"validation (weight decay {wd:g}): accuracy@0.5 {float(((pv >= 0.5) == y[vi]).mean()):.3f}, "
              f"AUC {common.binary_auc(pv, y[vi]):.3f} ({len(vi)} candidates)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    common.save_verifier(a.out, net.eval(), name, a.prompt)
    print(f"saved verifier -> {a.out}", flush=True)


def fit_probe(x, y, weight_decay, a):
    """Linear(d, 1) by full-batch Adam on standardized features (hidden states have a few
    dimensions hundreds of times larger than the rest), the standardization then folded into
    the weights so the engine scores raw hidden states."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(a.seed)
    net = common.Verifier(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    pos = float(yt.sum())
    pw = torch.tensor((len(yt) - pos) / pos) if 0 < pos < len(yt) else torch.tensor(1.0)
    for _ in range(a.epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt), yt, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = net.linear.weight[0] / torch.from_numpy(sd)
        net.linear.bias -= (w * torch.from_numpy(mu)).sum()
        net.linear.weight.copy_(w[None, :])
    return net


def cross_validated_auc(x, y, prompts, weight_decay, a, folds=4):
    """Mean AUC over `folds` splits of the prompts (each prompt's candidates on one side)."""
    groups = sorted(set(prompts))
    random.Random(a.seed).shuffle(groups)
    aucs = []
    for f in range(folds):
        held = set(groups[f::folds])
        vi = np.array([i for i, p in enumerate(prompts) if p in held])
        ti = np.array([i for i, p in enumerate(prompts) if p not in held])
        net = fit_probe(x[ti], y[ti], weight_decay, a)
        with torch.no_grad():
            pv = torch.sigmoid(net(torch.from_numpy(x[vi]))).numpy()
        aucs.append(common.binary_auc(pv, y[vi]))
    return float(np.nanmean(aucs))


if __name__ == "__main__":
    main()
