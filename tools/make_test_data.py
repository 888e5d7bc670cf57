#!/usr/bin/env python3
"""Generates tests/data/gen/: tiny checkpoints and reference outputs computed by
the real transformers modeling code (the version pinned in tools/versions.env),
for cases the shared fixtures do not cover: other architectures (Qwen3, Phi-3,
Mixtral, Granite, SmolLM3, OLMo 2, Gemma 2, Gemma 3), rope scaling types, padding masks, tied embeddings, sliding windows.

    .venv/bin/python tools/make_test_data.py        # rewrites tests/data/gen/

Each case directory holds the save_pretrained output (config.json,
model.safetensors) and reference.safetensors with: input_ids, attention_mask
(all ones unless the case pads), logits, hidden_states_<i>, loss, grad.<param>
for every parameter, and generated_ids (8 prompt ids + 8 greedy new ids,
no padding). Float32, CPU, eager attention, deterministic.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "gen")

BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-6,
            rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu")


def case(name, arch, seq=12, pad=False, drop=(), classes=None, **overrides):
    config = {k: v for k, v in {**BASE, **overrides}.items() if k not in drop}
    return dict(name=name, arch=arch, seq=seq, pad=pad, config=config,
                classes=classes or (arch + "Config", arch + "ForCausalLM"))


CASES = [
    case("llama-padded", "Llama", pad=True),
    case("llama-tied", "Llama", tie_word_embeddings=True),
    case("llama-rope-linear", "Llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    case("llama-rope-dynamic", "Llama", seq=20, max_position_embeddings=16,
         rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    case("llama-rope-llama3", "Llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    case("llama-rope-yarn", "Llama", rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    case("mistral-window", "Mistral", seq=12, sliding_window=4),
    case("qwen2-window", "Qwen2", seq=12, use_sliding_window=True, sliding_window=4,
         max_window_layers=1),
    case("qwen3", "Qwen3", head_dim=8),
    case("phi3", "Phi3", num_key_value_heads=2, pad_token_id=None),
    # One KV head: packed q | k | v at tp 2 and 4 replicates it.
    case("phi3-mqa", "Phi3", num_key_value_heads=1, pad_token_id=None),
    case("mixtral", "Mixtral", num_local_experts=4, num_experts_per_tok=2),
    case("qwen3-moe", "Qwen3Moe", head_dim=8, num_experts=4, num_experts_per_tok=2,
         moe_intermediate_size=16, norm_topk_prob=True, mlp_only_layers=[1]),
    case("gpt-oss", "GptOss", drop=("rope_theta",), head_dim=8, num_local_experts=4, num_experts_per_tok=2,
         intermediate_size=16, sliding_window=4, swiglu_limit=1.0, attention_bias=True,
         rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                          "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                          "original_max_position_embeddings": 200}),
    case("granite", "Granite", embedding_multiplier=2.0, residual_multiplier=0.5,
         attention_multiplier=0.3, logits_scaling=4.0),
    case("smollm3", "SmolLM3", pad_token_id=None, bos_token_id=None, eos_token_id=None,
         tie_word_embeddings=True, no_rope_layers=[1, 0],
         use_sliding_window=True, sliding_window=4),
    case("olmo2", "Olmo2"),
    case("gemma2", "Gemma2", drop=("hidden_act",), tie_word_embeddings=True, head_dim=8,
         query_pre_attn_scalar=16, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
         sliding_window=4),
    case("gemma3", "Gemma3Text", drop=("hidden_act", "rope_theta"),
         classes=("Gemma3TextConfig", "Gemma3ForCausalLM"), tie_word_embeddings=True, head_dim=8,
         query_pre_attn_scalar=16, sliding_window=4,
         layer_types=["sliding_attention", "full_attention"],
         rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}),
]


def build(c):
    cfg_cls = getattr(transformers, c["classes"][0])
    model_cls = getattr(transformers, c["classes"][1])
    config = cfg_cls(**c["config"], attn_implementation="eager")
    torch.manual_seed(0)
    model = model_cls(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    for c in CASES:
        d = os.path.join(OUT, c["name"])
        model = build(c)
        model.save_pretrained(d, safe_serialization=True)
        gen = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, c["config"]["vocab_size"], (2, c["seq"]), generator=gen)
        mask = torch.ones_like(ids)
        if c["pad"]:
            mask[1, :3] = 0  # left padding of the second sequence
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        out.loss.backward()
        ref = {"input_ids": ids, "attention_mask": mask, "logits": out.logits.detach(),
               "loss": out.loss.detach()}
        for i, h in enumerate(out.hidden_states):
            ref[f"hidden_states_{i}"] = h.detach().contiguous()
        for name, p in model.named_parameters():
            if p.grad is not None:
                ref["grad." + name] = p.grad.detach().contiguous()
        with torch.no_grad():
            ref["generated_ids"] = model.generate(ids[:1, :8], attention_mask=torch.ones_like(ids[:1, :8]),
                                                  max_new_tokens=8, do_sample=False, use_cache=True,
                                                  eos_token_id=None, pad_token_id=0)
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        print(f"{c['name']}: loss {out.loss.item():.6f}, {len(ref)} reference tensors")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("Generated by tools/make_test_data.py with transformers "
                f"{transformers.__version__}, torch {torch.__version__}. Do not edit by hand.\n\n")
        for c in CASES:
            f.write(f"- {c['name']}: {c['classes'][1]}, seq {c['seq']}, "
                    f"{'left-padded' if c['pad'] else 'no padding'}, overrides "
                    f"{json.dumps({k: v for k, v in c['config'].items() if BASE.get(k) != v})}\n")


if __name__ == "__main__":
    sys.exit(main())
