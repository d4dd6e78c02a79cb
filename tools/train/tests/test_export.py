"""Export formats the engine reads: switcher, verifier, PEFT adapters, and the adapter fixture."""

import json
import re
import subprocess
import sys

import numpy as np
import torch
from safetensors import safe_open

import common
from conftest import TINY_QWEN2, TRAIN_DIR

ADAPTER_NAME = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight")


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_switcher_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = common.Switcher(24).eval()
    path = tmp_path / "switcher.safetensors"
    common.save_switcher(str(path), net, 0.4375, "my-model")
    t, meta = read(path)
    assert {k: tuple(v.shape) for k, v in t.items()} == {
        "fc1.weight": (8, 24), "fc1.bias": (8,), "fc2.weight": (1, 8), "fc2.bias": (1,)}
    assert all(v.dtype == torch.float32 for v in t.values())
    assert meta["format"] == "edgereason-switcher-v1" and meta["hidden_size"] == "24"
    assert float(meta["threshold"]) == 0.4375 and float(meta["ema_alpha"]) == 0.5 and meta["base_model"] == "my-model"
    x = torch.randn(5, 24)
    # the engine's computation from the raw tensors
    manual = torch.relu(x @ t["fc1.weight"].T + t["fc1.bias"]) @ t["fc2.weight"].T + t["fc2.bias"]
    net2, _ = common.load_switcher(str(path))
    with torch.no_grad():
        assert torch.allclose(net2(x), manual[:, 0]) and torch.equal(net2(x), net(x))


def test_verifier_roundtrip(tmp_path):
    torch.manual_seed(1)
    net = common.Verifier(24).eval()
    path = tmp_path / "verifier.safetensors"
    common.save_verifier(str(path), net, "my-model")
    t, meta = read(path)
    assert {k: tuple(v.shape) for k, v in t.items()} == {"linear.weight": (1, 24), "linear.bias": (1,)}
    assert all(v.dtype == torch.float32 for v in t.values())
    assert meta == {"format": "edgereason-verifier-v1", "hidden_size": "24",
                    "prompt": "\nIs this solution correct? Answer yes or no:", "base_model": "my-model"}
    net2, _ = common.load_verifier(str(path))
    x = torch.randn(3, 24)
    with torch.no_grad():
        assert torch.equal(net2(x), net(x))


def check_adapter_dir(d, r, n_layers=2, dtype=torch.float32, hidden=64, inter=160, kv=32):
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["r"] == r and set(cfg["target_modules"]) == set(common.PROJECTIONS) and cfg["peft_type"] == "LORA"
    t, _ = read(d / "adapter_model.safetensors")
    assert len(t) == n_layers * 7 * 2
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    for k, v in t.items():
        m = ADAPTER_NAME.fullmatch(k)
        assert m, k
        fin, fout = dims[m.group(3)]
        assert tuple(v.shape) == ((r, fin) if m.group(4) == "A" else (fout, r)), k
        assert v.dtype == dtype
    return cfg, t


def test_save_adapter_f16(tmp_path):
    from peft import get_peft_model

    base, _, _ = common.load_base(str(TINY_QWEN2))
    model = get_peft_model(base, common.lora_config(4, 8, 0.0, rslora=True))
    common.save_adapter(model, str(tmp_path), "f16")
    cfg, t = check_adapter_dir(tmp_path, 4, dtype=torch.float16)
    assert cfg["use_rslora"] is True and cfg["lora_alpha"] == 8


def test_adapter_fixture(tmp_path):
    subprocess.run([sys.executable, str(TRAIN_DIR / "make_adapter_fixture.py"), "--model", str(TINY_QWEN2),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    from peft import PeftModel

    for sub, rslora, dtype in (("lora", False, torch.float32), ("lora-rslora", True, torch.float16)):
        d = tmp_path / sub
        cfg, t = check_adapter_dir(d, 4, dtype=dtype)
        assert cfg["lora_alpha"] == 8 and cfg["use_rslora"] is rslora
        assert all(torch.count_nonzero(v) == v.numel() for k, v in t.items() if "lora_B" in k)
        e = json.loads((d / "expected.json").read_text())
        T, P = len(e["tokens"]), e["prompt_len"]
        full, masked, base_l = (np.array(e[k], np.float32) for k in ("logits_full", "logits_masked", "logits_base"))
        assert full.shape == masked.shape == base_l.shape == (T, 400) and 0 < P < T
        assert np.array_equal(masked[:P], base_l[:P])
        assert np.abs(masked[P:] - base_l[P:]).max() > 1e-2 and np.abs(full[:P] - base_l[:P]).max() > 1e-2
        # the saved files reproduce the logits through plain PEFT
        base, _, _ = common.load_base(str(TINY_QWEN2))
        model = PeftModel.from_pretrained(base, str(d)).float().eval()
        with torch.no_grad():
            got = model(input_ids=torch.tensor([e["tokens"]])).logits[0].numpy()
        assert np.abs(got - full).max() < 1e-4
