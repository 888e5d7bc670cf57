#!/usr/bin/env python3
"""The Python peers on the same checkpoint, timed in-process like weft's
loader times itself. One JSON line per run.

    python bench/peers.py safetensors DIR        # load_file, then clone: bytes in memory
    python bench/peers.py safetensors-lazy DIR   # load_file alone (an mmap; reads nothing)
    python bench/peers.py transformers DIR       # from_pretrained(dtype=bfloat16), on CPU
"""
import json
import os
import resource
import sys
import time


def main():
    which, model = sys.argv[1], sys.argv[2]
    import torch

    if which.startswith("safetensors"):
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
        start = time.perf_counter()
        tensors = {}
        for f in files:
            loaded = load_file(os.path.join(model, f))
            # load_file returns views of an mmap: nothing is read until used.
            # Cloning puts the bytes in memory, as weft's loader does.
            if which == "safetensors":
                loaded = {k: v.clone() for k, v in loaded.items()}
            tensors.update(loaded)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        seconds = time.perf_counter() - start
    else:
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        total = sum(p.numel() * p.element_size() for p in m.parameters())
        seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peer": which, "bytes": total, "seconds": round(seconds, 4),
                      "gb_per_s": round(total / seconds / 1e9, 3), "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
