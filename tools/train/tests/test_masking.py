"""Masked LoRA: with the mask 0 on the prompt, the prompt's hidden states and K/V are exactly the
base model's; response positions differ; sampling with a KV cache matches the full masked forward."""

import pytest
import torch

import common
from conftest import TINY_QWEN2


def kv(cache, layer):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer]


@pytest.fixture(scope="module")
def setup():
    from peft import get_peft_model

    base, tok, _ = common.load_base(str(TINY_QWEN2))
    base.eval()
    p_ids = common.chat_prompt_ids(tok, "Tom has 3 apples. He gets 2 more apples. How many apples?")
    r_ids = common.response_ids(tok, "<think>\n3 + 2 = 5.\n</think>\n\nFinal answer: \\boxed{5}")
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        ref = base(input_ids=ids, output_hidden_states=True, use_cache=True)
    model = get_peft_model(base, common.lora_config(4, 8, 0.0, init_weights=False)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if "lora_" in n:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
    return model, common.AdapterMask(model), tok, ids, len(p_ids), ref


def run(model, ids, mask, masker):
    with torch.no_grad(), common.maybe_mask(masker, mask):
        return model(input_ids=ids, output_hidden_states=True, use_cache=True)


def test_prompt_positions_bit_identical(setup):
    model, masker, _, ids, P, ref = setup
    mask = torch.ones(ids.shape)
    mask[:, :P] = 0
    out = run(model, ids, mask, masker)
    for h, hr in zip(out.hidden_states, ref.hidden_states):
        assert torch.equal(h[:, :P], hr[:, :P])
    for layer in range(model.config.num_hidden_layers):
        (k, v), (kr, vr) = kv(out.past_key_values, layer), kv(ref.past_key_values, layer)
        assert torch.equal(k[:, :, :P], kr[:, :, :P]) and torch.equal(v[:, :, :P], vr[:, :, :P])
        assert not torch.allclose(k[:, :, P:], kr[:, :, P:], atol=1e-4)
    assert torch.equal(out.logits[:, :P], ref.logits[:, :P])
    assert not torch.allclose(out.logits[:, P:], ref.logits[:, P:], atol=1e-3)
    # the final-norm hidden state via decoder() agrees with the last hidden_states entry
    h = common.last_hidden(model, ids[0].tolist(), P, masker)
    assert torch.allclose(h, out.hidden_states[-1][0], atol=1e-6)


def test_unmasked_changes_prompt_and_disabled_is_base(setup):
    model, masker, _, ids, P, ref = setup
    full = run(model, ids, None, masker)
    assert not torch.allclose(full.logits[:, :P], ref.logits[:, :P], atol=1e-3)
    ones = run(model, ids, torch.ones(ids.shape), masker)
    assert torch.equal(ones.logits, full.logits)
    with model.disable_adapter():
        off = run(model, ids, torch.ones(ids.shape), masker)
    assert torch.equal(off.logits, ref.logits)


def test_mask_gradient_only_from_response(setup):
    """With the prompt masked, prompt-position outputs carry no gradient to the LoRA weights."""
    model, masker, _, ids, P, _ = setup
    mask = torch.ones(ids.shape)
    mask[:, :P] = 0
    with masker(mask):
        logits = model(input_ids=ids).logits
    logits[:, :P].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_sampling_matches_masked_forward(setup):
    model, masker, tok, ids, P, _ = setup
    prompt = ids[0, :P].tolist()
    stop = common.stop_ids(tok, model)
    seqs = common.sample(model, prompt, 3, 12, 0.0, stop, masker)
    assert seqs[0] == seqs[1] == seqs[2] and len(seqs[0]) >= 1
    full = torch.tensor([prompt + seqs[0]])
    mask = torch.ones(full.shape)
    mask[:, :P] = 0
    with torch.no_grad(), masker(mask):
        logits = model(input_ids=full).logits[0]
    assert logits[P - 1: P - 1 + len(seqs[0])].argmax(-1).tolist() == seqs[0]
    # sampled (T>0) runs are reproducible with a seeded generator
    a = common.sample(model, prompt, 2, 8, 0.8, stop, masker, torch.Generator().manual_seed(5))
    b = common.sample(model, prompt, 2, 8, 0.8, stop, masker, torch.Generator().manual_seed(5))
    assert a == b


def test_sampling_with_opener_feeds_it_with_the_adapter_on(setup):
    model, masker, tok, ids, P, _ = setup
    prompt = ids[0, :P].tolist()
    stop = common.stop_ids(tok, model)
    opener = common.opener_ids(tok)
    assert opener
    seqs = common.sample(model, prompt, 2, 12, 0.0, stop, masker, opener=opener)
    assert all(s[: len(opener)] == opener and len(s) <= 12 for s in seqs)
    full = torch.tensor([prompt + seqs[0]])
    mask = torch.ones(full.shape)
    mask[:, :P] = 0
    with torch.no_grad(), masker(mask):
        logits = model(input_ids=full).logits[0]
    k = len(opener)
    assert logits[P - 1 + k: P - 1 + len(seqs[0])].argmax(-1).tolist() == seqs[0][k:]


def test_mask_shape_mismatch_raises(setup):
    model, masker, _, ids, _, _ = setup
    with pytest.raises(RuntimeError):
        with masker(torch.ones((1, 3))):
            model(input_ids=ids)


def test_fake_quant_projections():
    from quant import check_idempotent

    base, _, _ = common.load_base(str(TINY_QWEN2))
    with torch.no_grad():
        for mod in base.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.add_(1e-3 * torch.randn(mod.weight.shape))
    n = common.fake_quantize_projections(base)
    assert n == 7 * base.config.num_hidden_layers
    for name, mod in base.named_modules():
        if name.split(".")[-1] in common.PROJECTIONS:
            assert check_idempotent(mod.weight.detach().numpy())


def test_gradient_checkpointing_keeps_mask():
    """Checkpointing re-runs the forward inside backward; with the mask held through backward the
    gradients equal the plain ones (with the mask dropped before backward they would not)."""
    from peft import get_peft_model

    grads = []
    for ckpt in (False, True):
        base, tok, _ = common.load_base(str(TINY_QWEN2))
        model = get_peft_model(base, common.lora_config(4, 8, 0.0, init_weights=False))
        torch.manual_seed(0)
        with torch.no_grad():
            for n, prm in model.named_parameters():
                if "lora_" in n:
                    prm.copy_(torch.randn(prm.shape) * 0.1)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        masker = common.AdapterMask(model)
        ids = torch.tensor([common.chat_prompt_ids(tok, "What is 2 + 2?") + [5, 6, 7, 8]])
        mask = torch.ones(ids.shape)
        mask[:, :-4] = 0
        with masker(mask):
            model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
