#!/usr/bin/env python3
"""Budget-forced GRPO on the LoRA parameters of a reasoning adapter (start from an SFT adapter).

Per step, for each sampled prompt:
  * a budget B is drawn from --budgets and appended to the user message exactly as
    "\\n(Reasoning budget: {B} tokens.)"; with probability --unstated-frac the prompt states
    none and B is --unstated-budget, which teaches the length of replies to plain prompts
    (what `edgereason run` sends when no budget is asked for)
  * G completions are sampled (temperature T) with the adapter off on the prompt and on for
    generated tokens - the engine's schedule (common.AdapterMask)
  * reward = correct x R_budget(L), L = generated tokens (incl. the stop token),
    R_budget = 1 for L <= (1-m)B, linear down to p at (1+m)B, p beyond;
    correct = the last \\boxed{...} (else last number) equals the item's answer after normalising
    (with --require-box, only a boxed answer counts).
    Generation stops at floor((1+m)B)+1 tokens (or --max-new-tokens): longer can only score p.
  * advantages = (r - mean) / (std + eps) within the group; groups whose rewards are all equal
    carry no signal and are skipped.
Loss (one on-policy update per batch of groups, so the importance ratio is 1 and only its
gradient matters): per token -(ratio * A - beta * KL), KL = k3 estimator against the reference
policy = the starting adapter (the SFT one; its weights are swapped in for the reference forward,
with the same adapter mask); averaged over each sequence's tokens, then over sequences. (Not the
base model: after SFT the base gives the trained format near-zero probability, and the k3
estimator exp(ref - logp) explodes on it.)

This is an explicit loop rather than trl's GRPOTrainer: the per-token adapter mask has to reach
both generation (prefill off, decode on) and the scoring forward, which GRPOTrainer gives no hook
for. Distribution comes from accelerate: `accelerate launch tools/train/grpo.py ...` runs
data-parallel, each process sampling its own prompts (--prompts-per-step is per process).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

import common  # noqa: E402
from data import load_jsonl, think_response  # noqa: E402


def rollout(model, masker, tok, item, budget, a, stop, gen, stated=True):
    """Sample a group for one prompt (the budget in its text when `stated`); return
    (prompt ids, completions, rewards, corrects)."""
    pids = common.chat_prompt_ids(tok, common.budget_prompt(item["prompt"], budget if stated else None))
    cap = min(a.max_new_tokens, int(math.floor((1 + a.margin) * budget)) + 1)
    seqs = common.sample(model, pids, a.group_size, cap, a.temperature, stop, masker, gen, a.opener)
    rewards, corrects = [], []
    for s in seqs:
        ok = reply_correct(tok.decode(common.strip_stop(s, stop)), item["answer"], a.require_box)
        corrects.append(ok)
        gate = 1.0 if a.no_correctness else float(ok)
        rewards.append(gate * common.budget_reward(len(s), budget, a.margin, a.floor))
    return pids, seqs, rewards, corrects


def reply_correct(text: str, answer: str, require_box: bool = False) -> bool:
    """The reward's correctness: the engine's answer rule (the last \\boxed{}, else the last
    number); with require_box only a boxed answer counts. Without it, a policy rewarded for
    brevity learns to drop the box and end on "Final answer." - the last number of its steps
    still grades as right, and the reply no longer states its answer. A reply that opened a think
    block must also close it before the box: 50 steps learned to save the three tokens of
    `</think>` and box the answer inside the reasoning, which the engine shows as reasoning."""
    if require_box:
        _, closed, shown = text.partition("</think>")
        if not closed and "<think>" not in text:
            shown = text  # no think block: the whole reply is the answer
        if "\\boxed{" not in shown:
            return False
    return common.is_correct(text, answer)


def reasoning_reply(direct: str) -> str:
    """A direct answer (`6 * 3 = 18. \\boxed{18}`) as the adapter writes it in reasoning mode: the
    sentence in the think block, then the boxed answer. Measured against the direct answer itself,
    the think frame alone went over (1 + m)B, so every easy reply scored 0 and its group was skipped."""
    body, sep, rest = direct.rpartition("\\boxed{")
    if not sep:
        return think_response([direct.strip()], "")
    return think_response([body.strip()], rest[:-1] if rest.endswith("}") else rest)


def unstated_budget_rule(spec: str | None, default: int, margin: float, tok):
    """item -> the budget B of a prompt that states none (--unstated-budget).

    'ref' ties B to the item: its shortest complete reply (short_response: data.py's terse trace)
    earns the full R_budget and longer replies earn less, so a reply gains nothing by being
    shorter than a complete one - unlike one B shared by 2-step and 4-step problems, under which
    the long problems can only score by dropping steps. 'ref:S' moves the full reward to S times
    that length (S < 1: the reference reply itself earns less than 1, so what it can spare
    without losing the answer - a line, the words before the box - still pays)."""
    if spec is None or not spec.startswith("ref"):
        try:
            b = int(spec) if spec else default
        except ValueError:
            raise SystemExit(f"--unstated-budget {spec!r}: expected a token count, 'ref' or 'ref:S'") from None
        return lambda item: b
    try:
        scale = float(spec[4:]) if spec.startswith("ref:") else 1.0 if spec == "ref" else -1.0
    except ValueError:
        scale = -1.0
    if not 0.0 < scale <= 1.0:
        raise SystemExit(f"--unstated-budget {spec!r}: expected 'ref' or 'ref:S' with 0 < S <= 1")
    if not 0.0 <= margin < 1.0:
        raise SystemExit(f"--unstated-budget ref needs a margin below 1 (got --margin {margin})")
    cache: dict[str, float] = {}

    def budget(item):
        ref = item.get("short_response")
        if not ref:  # its response; a direct answer (data.py's easy items) in the think frame
            ref = item["response"] if "<think>" in item["response"] else reasoning_reply(item["response"])
        if ref not in cache:
            cache[ref] = scale * len(common.response_ids(tok, ref)) / (1.0 - margin)
        return cache[ref]

    return budget


def build_batch(groups, pad_id, device):
    """Right-padded prompt+completion rows (no left padding: position ids must match sampling)."""
    rows = [(p, s, adv, k) for p, seqs, advs, k in groups for s, adv in zip(seqs, advs)]
    T = max(len(p) + len(s) for p, s, _, _ in rows)
    n = len(rows)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    att = torch.zeros((n, T), dtype=torch.long)
    amask = torch.zeros((n, T))
    tmask = torch.zeros((n, T - 1))  # 1 where logits[:, t] predict a completion token ids[:, t+1]
    adv = torch.zeros(n)
    for i, (p, s, a, k) in enumerate(rows):
        P, L = len(p), len(s)
        ids[i, : P + L] = torch.tensor(p + s)
        att[i, : P + L] = 1
        amask[i, P: P + L] = 1
        tmask[i, P - 1 + k: P + L - 1] = 1  # not the k fed opener tokens: they were not sampled
        adv[i] = a
    return [t.to(device) for t in (ids, att, amask, tmask, adv)]


def token_logps(model, ids, att, temperature):
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p)
    p.add_argument("--adapter", default=None, help="SFT adapter to start from (PEFT dir); none = fresh LoRA")
    p.add_argument("--r", type=int, default=8, help="LoRA rank when starting fresh")
    p.add_argument("--alpha", type=float, default=16, help="LoRA alpha when starting fresh")
    p.add_argument("--data", required=True, help="JSONL with prompt + answer (response optional)")
    p.add_argument("--difficulty", choices=["hard", "easy", "all"], default="hard", help="which items to train on")
    p.add_argument("--eval-data", default=None, help="held-out JSONL: accuracy/length before and after training")
    p.add_argument("--eval-n", type=int, default=32, help="held-out prompts evaluated (1 sample each)")
    p.add_argument("--out", required=True, help="output adapter directory (PEFT format)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step per process")
    p.add_argument("--group-size", "-G", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--beta", type=float, default=1e-3, help="KL coefficient (reference = adapter disabled)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (also used for log-probs)")
    p.add_argument("--budgets", default="64,128,256", help="comma-separated budget buckets B (tokens)")
    p.add_argument("--unstated-frac", type=float, default=0.0,
                   help="share of prompts that state no budget (rewarded against --unstated-budget)")
    p.add_argument("--unstated-budget", default=None,
                   help="budget B of prompts that state none: a token count (default: the smallest of "
                        "--budgets), or 'ref': per item, R_budget is 1 up to the length of its shortest "
                        "complete reply (its short_response, else its response), B = that / (1 - m); "
                        "'ref:S' scales that length by S")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save the adapter to --out every N steps (a long run stopped early keeps its last)")
    p.add_argument("--curve", default=None,
                   help="CSV of the training curve: step, reward, accuracy, length, kl, loss, seconds")
    p.add_argument("--margin", "-m", type=float, default=0.2, help="R_budget margin m")
    p.add_argument("--floor", "-p", type=float, default=0.0, help="R_budget value p beyond (1+m)B")
    p.add_argument("--require-box", action="store_true",
                   help="a reply is correct only with its answer in \\boxed{} (the trained format)")
    p.add_argument("--no-correctness", action="store_true",
                   help="reward = R_budget(L) alone; for smoke tests on models that never answer correctly "
                        "(exercises the update path)")
    p.add_argument("--max-new-tokens", type=int, default=4096, help="hard cap on generated tokens")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="tensor type of the saved adapter")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--think-prefix", default=common.THINK_PREFIX,
                   help="fed after the prompt before sampling, as the engine does in reasoning mode ('' = none)")
    a = p.parse_args()

    acc = Accelerator()
    set_seed(a.seed)
    from peft import PeftModel, get_peft_model

    base, tok, name = common.load_base(a.model, a.tokenizer, a.fake_quant_int4)
    if a.adapter:
        model = PeftModel.from_pretrained(base, a.adapter, is_trainable=True)
        for n_, prm in model.named_parameters():  # train in f32 even if the adapter was saved in f16
            if prm.requires_grad:
                prm.data = prm.data.float()
    else:
        model = get_peft_model(base, common.lora_config(a.r, a.alpha, 0.0))
    masker = common.AdapterMask(model)
    for m_ in model.modules():  # on-policy: sampled and scored log-probs must be the same policy
        if isinstance(m_, torch.nn.Dropout):
            m_.p = 0.0
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stop = common.stop_ids(tok, base)
    a.opener = common.opener_ids(tok, a.think_prefix)
    budgets = [int(b) for b in a.budgets.split(",")]
    unstated_budget = unstated_budget_rule(a.unstated_budget, min(budgets), a.margin, tok)
    items = [it for it in load_jsonl(a.data, need_answer=True) if a.difficulty in ("all", it["difficulty"])]
    evals = load_jsonl(a.eval_data, need_answer=True)[: a.eval_n] if a.eval_data else []
    common.log(acc, f"base {name}, adapter {a.adapter or 'fresh'}; {len(items)} {a.difficulty} prompts; "
                    f"budgets {budgets} m={a.margin} p={a.floor} G={a.group_size} beta={a.beta} T={a.temperature}; "
                    f"{a.unstated_frac:.0%} of prompts state no budget (B={a.unstated_budget or min(budgets)})")
    curve = open(a.curve, "w") if a.curve and acc.is_main_process else None
    if curve:
        curve.write("step,reward,accuracy,length,kl,loss,seconds\n")

    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    core = acc.unwrap_model(model)
    lora = {n_: q for n_, q in core.named_parameters() if q.requires_grad}
    start = {n_: q.detach().clone() for n_, q in lora.items()}

    @contextlib.contextmanager
    def reference_weights():
        """The starting adapter's weights in place of the current ones (no grad), then back."""
        now = {n_: q.detach().clone() for n_, q in lora.items()}
        with torch.no_grad():
            for n_, q in lora.items():
                q.copy_(start[n_])
        try:
            yield
        finally:
            with torch.no_grad():
                for n_, q in lora.items():
                    q.copy_(now[n_])

    rng = random.Random(a.seed * 1000 + acc.process_index)  # each process draws its own prompts
    gen = torch.Generator().manual_seed(a.seed * 1000 + acc.process_index)

    def evaluate(tag):
        if not evals:
            return
        core.eval()
        erng = random.Random(a.seed)
        n_ok, n_tok, n_in = 0, 0, 0
        mine = evals[acc.process_index:: acc.num_processes]
        for it in mine:
            B = erng.choice(budgets)
            _, seqs, _, corr = rollout(core, masker, tok, it, B, argparse.Namespace(**{**vars(a), "group_size": 1}), stop, gen)
            n_ok += corr[0]
            n_tok += len(seqs[0])
            n_in += len(seqs[0]) <= B
        t = acc.reduce(torch.tensor([n_ok, n_tok, n_in, len(mine)], dtype=torch.float, device=acc.device), "sum")
        common.log(acc, f"[eval {tag}] accuracy {t[0] / t[3]:.3f}, mean length {t[1] / t[3]:.1f} tokens, "
                        f"within budget {t[2] / t[3]:.3f} ({int(t[3])} prompts, T={a.temperature})")

    evaluate("before")
    t0 = time.time()
    for step in range(1, a.steps + 1):
        core.eval()
        groups, stats = [], torch.zeros(6, device=acc.device)  # reward, correct, length, seqs, skipped, groups
        for it in rng.sample(items, min(a.prompts_per_step, len(items))):
            B = rng.choice(budgets)
            stated = a.unstated_frac <= 0 or rng.random() >= a.unstated_frac
            B = B if stated else unstated_budget(it)
            pids, seqs, rewards, corr = rollout(core, masker, tok, it, B, a, stop, gen, stated)
            r = torch.tensor(rewards)
            stats += torch.tensor([r.sum(), sum(corr), sum(map(len, seqs)), len(seqs), 0, 1], device=acc.device)
            if float(r.max() - r.min()) < 1e-9:
                stats[4] += 1
                continue
            adv = (r - r.mean()) / (r.std() + 1e-4)
            groups.append((pids, seqs, adv.tolist(), len(a.opener)))

        if groups:
            # One group per forward/backward: the [rows, T, vocab] f32 log-softmax of a whole
            # step's groups (32 x 225 x 49152 for SmolLM2) exceeded 24 GB.
            n_rows = sum(len(g[1]) for g in groups)
            loss, kl_sum, kl_n = 0.0, 0.0, 0.0
            for g in groups:
                ids, att, amask, tmask, adv = build_batch([g], tok.pad_token_id, acc.device)
                with torch.no_grad(), reference_weights(), masker(amask):
                    ref = token_logps(core, ids, att, a.temperature)
                core.train()  # dropout is 0; train mode so gradient checkpointing (if on) applies
                with masker(amask):  # kept through backward: checkpointing re-runs the forward there
                    logp = token_logps(model, ids, att, a.temperature)
                    d = ref - logp
                    kl = torch.exp(d) - d - 1
                    per_tok = -(torch.exp(logp - logp.detach()) * adv[:, None] - a.beta * kl)
                    part = (per_tok * tmask).sum(1) / tmask.sum(1).clamp(min=1)
                    part = part.sum() / n_rows  # the step's loss is the mean over all its rows
                    acc.backward(part)
                loss += float(part)
                kl_sum += float((kl * tmask).sum())
                kl_n += float(tmask.sum())
            kl_mean = kl_sum / max(kl_n, 1.0)
        elif acc.num_processes > 1:
            # nothing to learn here, but DDP needs every process in the gradient all-reduce
            loss = model(input_ids=torch.full((1, 1), tok.pad_token_id, device=acc.device)).logits.sum() * 0.0
            kl_mean = 0.0
            acc.backward(loss)
        else:
            loss, kl_mean = None, 0.0
        if loss is not None:
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()

        s = acc.reduce(stats, "sum")
        n = max(float(s[3]), 1)
        if curve:
            curve.write(f"{step},{s[0] / n:.4f},{s[1] / n:.4f},{s[2] / n:.2f},{kl_mean:.3e},"
                        f"{float(loss) if loss is not None else 0.0:.5f},{time.time() - t0:.0f}\n")
            curve.flush()
        if a.save_every and step % a.save_every == 0 and step < a.steps and acc.is_main_process:
            common.save_adapter(core, a.out, a.dtype)
        if step % a.log_every == 0 or step == a.steps:
            common.log(acc, f"step {step}/{a.steps} reward {s[0] / n:.3f} accuracy {s[1] / n:.3f} "
                            f"length {s[2] / n:.1f} skipped {int(s[4])}/{int(s[5])} groups "
                            f"kl {kl_mean:.2e} loss {float(loss) if loss is not None else 0.0:.4f} "
                            f"{time.time() - t0:.0f}s")

    evaluate("after")
    acc.wait_for_everyone()
    if acc.is_main_process:
        path = common.save_adapter(core, a.out, a.dtype)
        common.log(acc, f"saved adapter -> {path} ({a.dtype})")


if __name__ == "__main__":
    main()
