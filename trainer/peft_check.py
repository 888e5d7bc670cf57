#!/usr/bin/env python3
"""PEFT's side of trainer/peft_interop_test.sh (the venv's peft and transformers).

    peft_check.py base DIR                      a tiny Llama (vocab 256), saved
    peft_check.py ids OUT                       input_ids [2, 16] as safetensors
    peft_check.py make-adapter BASE OUT IDS LOGITS
                                                a PEFT LoRA adapter with random
                                                A and B (saved), and its logits
    peft_check.py adapter-logits BASE ADAPTER IDS LOGITS
                                                PEFT's logits with ADAPTER on BASE
    peft_check.py generate BASE ADAPTER IDS N   PEFT's greedy ids (comma-separated)
    peft_check.py model-logits DIR IDS LOGITS   transformers' logits of DIR
    peft_check.py compare A B [TOL]             two logits files agree (max |diff|)
"""
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file


def load(dir):
    return transformers.AutoModelForCausalLM.from_pretrained(
        dir, dtype=torch.float32, attn_implementation="eager").eval()


def logits(model, ids_path):
    ids = load_file(ids_path)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


def main():
    cmd = sys.argv[1]
    torch.manual_seed(0)
    if cmd == "base":
        config = transformers.LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, tie_word_embeddings=False)
        transformers.LlamaForCausalLM(config).save_pretrained(sys.argv[2])
    elif cmd == "ids":
        ids = torch.randint(32, 127, (2, 16), generator=torch.Generator().manual_seed(3))
        save_file({"input_ids": ids}, sys.argv[2])
    elif cmd == "make-adapter":
        import peft
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                                 target_modules=["q_proj", "k_proj", "o_proj", "gate_proj",
                                                 "down_proj"], task_type="CAUSAL_LM")
        model = peft.get_peft_model(load(sys.argv[2]), config)
        model.save_pretrained(sys.argv[3])
        save_file({"logits": logits(model.eval(), sys.argv[4])}, sys.argv[5])
    elif cmd == "adapter-logits":
        import peft
        model = peft.PeftModel.from_pretrained(load(sys.argv[2]), sys.argv[3]).eval()
        save_file({"logits": logits(model, sys.argv[4])}, sys.argv[5])
    elif cmd == "generate":
        import peft
        model = peft.PeftModel.from_pretrained(load(sys.argv[2]), sys.argv[3]).eval()
        ids = torch.tensor([[int(x) for x in sys.argv[4].split(",")]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=int(sys.argv[5]), do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        print(",".join(str(int(x)) for x in out[0]))
    elif cmd == "model-logits":
        save_file({"logits": logits(load(sys.argv[2]), sys.argv[3])}, sys.argv[4])
    elif cmd == "compare":
        a, b = load_file(sys.argv[2])["logits"], load_file(sys.argv[3])["logits"]
        tol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
        diff = (a - b).abs().max().item()
        if a.shape != b.shape or diff > tol:
            sys.exit(f"logits differ: shapes {tuple(a.shape)} {tuple(b.shape)}, max |diff| {diff}")
        print(f"max |diff| {diff:.2e}")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
