#!/usr/bin/env python3
"""Reference figures for cli/eval_transformers_test.sh, computed with
transformers on the same tokens `weft eval` reads.

    eval_reference.py model DIR VOCAB            a tiny LlamaForCausalLM, saved
    eval_reference.py loss DIR PREFIX SEQ_LEN [--packed]

`loss` reads PREFIX.bin/.idx/.mask (trainer/token_file.h) with numpy and
prints transformers' mean cross-entropy over the counted labels (-100 where
the mask is 0): over windows of SEQ_LEN of the concatenated tokens, or, with
--packed, over every document alone (truncated to SEQ_LEN), which is what a
packed batch must equal.
"""
import os
import sys

import numpy as np
import torch
import transformers


def read_tokens(prefix):
    idx = open(prefix + ".idx", "rb").read()
    width = int(np.frombuffer(idx[12:16], "<u4")[0])
    n_tokens, n_docs = (int(x) for x in np.frombuffer(idx[24:40], "<u8"))
    starts = np.frombuffer(idx[40:40 + 8 * (n_docs + 1)], "<u8").astype(np.int64)
    tokens = np.fromfile(prefix + ".bin", "<u2" if width == 2 else "<u4").astype(np.int64)
    mask = np.ones(n_tokens, np.uint8)
    if os.path.exists(prefix + ".mask"):
        raw = open(prefix + ".mask", "rb").read()
        assert raw[:8] == b"WEFTMSK1"
        mask = np.frombuffer(raw[16:], np.uint8)
    return tokens, starts, mask


def main():
    torch.manual_seed(0)
    if sys.argv[1] == "model":
        config = transformers.LlamaConfig(
            vocab_size=int(sys.argv[3]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2) if p.dim() > 1 else p.fill_(1.0)
        model.save_pretrained(sys.argv[2], safe_serialization=True)
        return
    model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[2], attn_implementation="eager",
                                                          dtype=torch.float32).eval()
    tokens, starts, mask = read_tokens(sys.argv[3])
    seq_len = int(sys.argv[4])
    rows = []
    if "--packed" in sys.argv:
        for d in range(len(starts) - 1):
            a, b = starts[d], min(starts[d + 1], starts[d] + seq_len)
            rows.append((tokens[a:b], mask[a:b]))
    else:
        for i in range(len(tokens) // seq_len):
            rows.append((tokens[i * seq_len:(i + 1) * seq_len], mask[i * seq_len:(i + 1) * seq_len]))
    total, counted = 0.0, 0
    with torch.no_grad():
        for ids, m in rows:
            ids = torch.tensor(ids).view(1, -1)
            labels = ids.masked_fill(torch.tensor(m).view(1, -1) == 0, -100)
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            loss = model(input_ids=ids, labels=labels).loss  # transformers' mean
            total += float(loss) * n
            counted += n
    print(f"{total / counted:.8f} {counted}")


if __name__ == "__main__":
    main()
