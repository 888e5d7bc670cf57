#!/usr/bin/env python3
"""Forward parity on the GPU (bench/gpu/run.sh): weft's logits from
`weft forward --device cuda --input FIXTURE/reference.safetensors` against
the fixture's CPU reference (transformers), one JSON line per fixture.

    compare.py FIXTURE_DIR WEFT_LOGITS [TOLERANCE]
"""
import json
import sys

from safetensors.torch import load_file


def main():
    ref = load_file(sys.argv[1] + "/reference.safetensors")["logits"].float()
    got = load_file(sys.argv[2])["logits"].float()
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
    diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
    print(json.dumps({"fixture": sys.argv[1], "max_abs_diff": diff, "tolerance": tol,
                      "ok": diff <= tol}))
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
