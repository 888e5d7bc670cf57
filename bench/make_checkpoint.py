#!/usr/bin/env python3
"""Writes a TinyLlama-1.1B-shaped Llama checkpoint (bf16, random weights) for
the loading benchmark: config.json, model-0000i-of-0000N.safetensors and
model.safetensors.index.json, as save_pretrained lays them out.

    python bench/make_checkpoint.py OUT_DIR [--max-shard-mb 600] [--layers N --hidden H
        --intermediate I --vocab V --dtype bfloat16|float32]

2.2 GB in 4 files with the default shard size. Idempotent: an existing
complete checkpoint in OUT_DIR is kept.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def shapes(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-shard-mb", type=int, default=600)
    ap.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    ap.add_argument("--hidden", type=int, default=CONFIG["hidden_size"])
    ap.add_argument("--intermediate", type=int, default=CONFIG["intermediate_size"])
    ap.add_argument("--vocab", type=int, default=CONFIG["vocab_size"])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    CONFIG.update(num_hidden_layers=args.layers, hidden_size=args.hidden,
                  intermediate_size=args.intermediate, vocab_size=args.vocab, torch_dtype=args.dtype)
    os.makedirs(args.out, exist_ok=True)
    index_path = os.path.join(args.out, "model.safetensors.index.json")
    if os.path.exists(index_path):
        print(f"{args.out}: already there")
        return
    gen = torch.Generator().manual_seed(0)
    limit = args.max_shard_mb * 1_000_000
    shards, current, size = [], {}, 0
    for name, shape in shapes(CONFIG):
        t = (torch.randn(shape, generator=gen) * 0.02).to(getattr(torch, args.dtype))
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(args.out, fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    with open(index_path + ".tmp", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    os.replace(index_path + ".tmp", index_path)
    print(f"{args.out}: {total / 1e9:.2f} GB in {len(shards)} files")


if __name__ == "__main__":
    main()
