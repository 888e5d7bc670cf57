"""Checks a weft export with transformers: loads DIR with
AutoModelForCausalLM.from_pretrained, runs it on fixed ids, and compares its
logits with the logits `weft forward` wrote for the same ids.

    python trainer/export_check.py write-ids IDS.safetensors
    python trainer/export_check.py compare DIR IDS.safetensors WEFT_LOGITS.safetensors
    python trainer/export_check.py shards DIR CHECKPOINT_DIR

`shards` rebuilds every parameter from the training checkpoint's per-rank
files (their `weft_shards` metadata: global shape and slice) and checks that
it equals the exported tensor.
"""
import glob
import json
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    if sys.argv[1] == "write-ids":
        ids = (torch.arange(2 * 24, dtype=torch.int64) * 37 % 256).view(2, 24)
        save_file({"input_ids": ids}, sys.argv[2])
        return 0
    if sys.argv[1] == "shards":
        return check_shards(sys.argv[2], sys.argv[3])
    from transformers import AutoModelForCausalLM

    export_dir, ids_path, weft_path = sys.argv[2:5]
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    model.eval()
    ids = load_file(ids_path)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    weft = load_file(weft_path)["logits"]
    diff = (logits - weft).abs().max().item()
    print(f"export_check: {type(model).__name__} loaded from {export_dir}; "
          f"max |transformers - weft| logits = {diff:.3g}")
    if diff > 1e-4:
        print("export_check: FAILED (expected <= 1e-4)")
        return 1
    return 0


def check_shards(export_dir, checkpoint_dir):
    from safetensors import safe_open

    exported = load_file(f"{export_dir}/model.safetensors")
    rebuilt = {}
    files = sorted(glob.glob(f"{checkpoint_dir}/model-tp*.safetensors"))
    for path in files:
        with safe_open(path, "pt") as f:
            shards = json.loads(f.metadata()["weft_shards"])
            for name in f.keys():
                spec = shards[name]
                full = rebuilt.setdefault(name, torch.full(spec["global_shape"], float("nan")))
                index = [torch.cat([torch.arange(a, b) for a, b in ranges]) for ranges in spec["slice"]]
                local = f.get_tensor(name)
                full[torch.meshgrid(*index, indexing="ij")] = local
    for name, tensor in exported.items():
        if not torch.equal(rebuilt[name], tensor):
            print(f"export_check: FAILED: {name} differs from the checkpoint's shards")
            return 1
    print(f"export_check: {len(exported)} exported tensors equal the {len(files)} ranks' shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
