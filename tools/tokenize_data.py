#!/usr/bin/env python3
"""Tokenize text into weft's token file (<prefix>.bin + <prefix>.idx).

Inputs (one or more, concatenated in the order given):
  *.jsonl  one JSON object per line; the document is its --field (default
           "text"); blank lines are skipped.
  *.txt    (any other suffix too) documents are blocks of lines separated
           by one or more blank lines (a blank line holds only spaces, tabs
           or '\\r').

Tokenizers:
  --tokenizer DIR  a Hugging Face tokenizer loaded from the local directory
                   DIR with transformers.AutoTokenizer.from_pretrained(DIR)
                   (nothing is downloaded). Each document is encoded without
                   special tokens, then the tokenizer's EOS is appended when
                   it has one. A .txt block is the text of its lines, without
                   the blank lines after it. vocab_size = len(tokenizer).
  --byte-level     one token per byte, vocab_size 256. A .txt document is the
                   bytes from the start of its block to the start of the next
                   block (blank lines included), exactly as weft's C++
                   WriteByteLevelTokenFile writes it; a .jsonl document is
                   the UTF-8 bytes of its field.

Output (little-endian, see trainer/token_file.h):
  <prefix>.bin  tokens as uint16 when vocab_size <= 65536, else uint32.
  <prefix>.idx  b"WEFTTOK1", uint32 version 1, uint32 bytes per token,
                uint64 vocab_size, uint64 num_tokens, uint64 num_documents,
                uint64 document starts [num_documents + 1].
Both are written to temporary files, fsynced and renamed into place.

Examples:
  .venv/bin/python tools/tokenize_data.py --byte-level book.txt -o data/book
  .venv/bin/python tools/tokenize_data.py --tokenizer models/llama \\
      --field text train.jsonl -o data/train
  # then in the trainer's YAML: data: {path: data/train}

--dump-json FILE also writes {"vocab_size", "document_starts", "tokens"} as
JSON (for tests; small inputs only).
"""

import argparse
import json
import os
import sys

import numpy as np

MAGIC = b"WEFTTOK1"
VERSION = 1


def blank(line):
    return line.strip(b" \t\r\n") == b""


def text_blocks(data):
    """Blocks of non-blank lines of `data` (bytes).

    Returns (block_start, block_end, next_start) byte offsets: the block's
    lines are data[block_start:block_end] (without the final newline) and its
    document for --byte-level runs to next_start (the next block or EOF).
    """
    starts, ends = [], []
    in_block = False
    pos = 0
    while pos < len(data):
        eol = data.find(b"\n", pos)
        nxt = len(data) if eol < 0 else eol + 1
        line = data[pos:nxt]
        if blank(line):
            in_block = False
        else:
            if not in_block:
                starts.append(pos)
                ends.append(None)
            ends[-1] = nxt if eol < 0 else eol
            in_block = True
        pos = nxt
    nexts = starts[1:] + [len(data)]
    return list(zip(starts, ends, nexts))


def documents(path, field, byte_level):
    """Yields each document of `path`: bytes for --byte-level, else str."""
    if path.endswith(".jsonl"):
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{lineno}: invalid JSON: {e}")
                if not isinstance(obj, dict) or field not in obj:
                    sys.exit(f"{path}:{lineno}: no field {field!r} (expected an object with it; "
                             f"see --field)")
                text = obj[field]
                if not isinstance(text, str):
                    sys.exit(f"{path}:{lineno}: field {field!r} is {type(text).__name__} "
                             f"(expected a string)")
                yield text.encode("utf-8") if byte_level else text
    else:
        with open(path, "rb") as f:
            data = f.read()
        for start, end, nxt in text_blocks(data):
            if byte_level:
                yield data[start:nxt]
            else:
                yield data[start:end].decode("utf-8")


def write_atomic(path, chunks):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(d)
    finally:
        os.close(d)


def write_token_file(prefix, tokens, starts, vocab_size):
    """Writes <prefix>.bin (first) and <prefix>.idx; returns bytes per token."""
    dtype = np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        sys.exit(f"token {int(tokens.max())} is out of range (expected < vocab_size {vocab_size})")
    header = MAGIC + np.array([VERSION, dtype.itemsize], dtype="<u4").tobytes()
    header += np.array([vocab_size, tokens.size, len(starts) - 1], dtype="<u8").tobytes()
    write_atomic(prefix + ".bin", [tokens.astype(dtype).tobytes()])
    write_atomic(prefix + ".idx", [header, np.asarray(starts, dtype="<u8").tobytes()])
    return dtype.itemsize


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help=".jsonl or text files")
    p.add_argument("-o", "--output", required=True, metavar="PREFIX",
                   help="writes PREFIX.bin and PREFIX.idx")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokenizer", metavar="DIR", help="local Hugging Face tokenizer directory")
    g.add_argument("--byte-level", action="store_true", help="one token per byte (vocab 256)")
    p.add_argument("--field", default="text", help="the .jsonl field holding the text (default: text)")
    p.add_argument("--dump-json", metavar="FILE",
                   help="also write vocab_size, document_starts and tokens as JSON")
    args = p.parse_args(argv)

    if args.byte_level:
        vocab_size = 256
        eos = None

        def encode(doc):
            return np.frombuffer(doc, dtype=np.uint8).astype(np.int64)
    else:
        if not os.path.isdir(args.tokenizer):
            sys.exit(f"--tokenizer {args.tokenizer}: not a directory (expected a local Hugging "
                     f"Face tokenizer directory)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer  # slow import: only when needed
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        vocab_size = len(tok)
        eos = tok.eos_token_id

        def encode(doc):
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            if eos is not None:
                ids = ids + [eos]
            return np.asarray(ids, dtype=np.int64)

    out_dir = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(out_dir, exist_ok=True)  # -o data/train: data/ may not exist yet
    except OSError as e:
        sys.exit(f"-o {args.output}: cannot create {out_dir} ({e.strerror})")
    parts, starts = [], [0]
    for path in args.inputs:
        for doc in documents(path, args.field, args.byte_level):
            ids = encode(doc)
            if ids.size == 0:
                continue  # an empty document has no tokens and no boundary
            parts.append(ids)
            starts.append(starts[-1] + int(ids.size))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    width = write_token_file(args.output, tokens, starts, vocab_size)
    if args.dump_json:
        with open(args.dump_json, "w") as f:
            json.dump({"vocab_size": vocab_size, "document_starts": starts,
                       "tokens": tokens.tolist()}, f)
            f.write("\n")
    print(f"{args.output}: {tokens.size} tokens, {len(starts) - 1} documents, "
          f"vocab_size {vocab_size}, {width} bytes per token")


if __name__ == "__main__":
    main()
