#!/usr/bin/env python3
"""The PyTorch/transformers peer of `weft train` for bench/run_train_bench.sh.

The same model (LlamaForCausalLM from the same config.json, random init,
fp32, sdpa attention), the same data (weft's token file, consecutive windows
of seq_len tokens), batch, steps and threads; torch.optim.AdamW (its default
implementation, foreach on CPU) with the same lr/betas/eps/weight decay (no
decay on 1-D parameters, as weft), constant lr, clip_grad_norm_, the loss
from the model (labels = input_ids).

Prints one JSON line: tokens/s over steps 2..N (step 1 is warm-up), seconds
per step, peak RSS, and the mean time of each phase (forward, backward,
clip, optimizer) over the same steps.

  .venv/bin/python bench/train_loop.py --config bench/train_llama100m.json \
      --data /tmp/weft-bench/train/tokens --seq-len 256 --batch 2 --steps 8 --threads 2
"""
import argparse
import json
import resource
import time

import numpy as np
import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, help="token file prefix (<prefix>.bin/.idx)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.95])
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--lora", type=int, default=0,
                    help="PEFT LoRA of this rank (alpha 2r) on q, k, v, o, gate, up, down; 0: full")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast over fp32 weights (PyTorch's usual mixed precision)")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with open(args.data + ".idx", "rb") as f:
        header = f.read(40)
    assert header[:8] == b"WEFTTOK1", "not a weft token file"
    width = int.from_bytes(header[12:16], "little")
    tokens = np.memmap(args.data + ".bin", dtype=np.uint16 if width == 2 else np.uint32, mode="r")

    config = transformers.LlamaConfig(**json.load(open(args.config)))
    config._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(config).to(torch.float32).to(device)
    if args.lora:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"]))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=tuple(args.betas), eps=args.eps, fused=device.type == "cuda")

    per_step = args.batch * args.seq_len
    phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    t_first = None
    step_times = []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        begin = (step - 1) * per_step
        window = np.asarray(tokens[begin:begin + per_step], dtype=np.int64)
        ids = torch.from_numpy(window).view(args.batch, args.seq_len).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        loss_value = loss.item()
        t2 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip).item()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        step_times.append(t4 - t0)
        if step == 1:
            t_first = t4
        else:
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k] += dt
    measured = args.steps - 1
    seconds = time.perf_counter() - t_first
    result = {
        "impl": "pytorch",
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "steps_measured": measured,
        "tokens_per_s": per_step * measured / seconds,
        "s_per_step": seconds / measured,
        "first_step_s": step_times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": args.device, "bf16": args.bf16,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
        "phases_s": {k: v / measured for k, v in phases.items()},
        "last_loss": loss_value,
        "last_grad_norm": grad_norm,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
