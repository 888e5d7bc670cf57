#!/usr/bin/env python3
"""Tokenize text or instruction data into weft's token file (<prefix>.bin/.idx/.mask).

Inputs (one or more, concatenated in the order given):
  *.jsonl  one JSON object per line, blank lines skipped. Each line's format
           is detected as TRL's SFTTrainer does (first match wins):
             {"prompt": str, "completion": str}        prompt-completion
             {"prompt": [msgs], "completion": [msgs]}  conversational
                                                       prompt-completion
             {"messages": [msgs]}                      conversational LM
             {"text": str} (the --field name)          language modeling
           where msgs are {"role": str, "content": ...} objects; a
           conversational line may also carry "tools" (passed to the chat
           template).
  *.txt    (any other suffix too) documents are blocks of lines separated
           by one or more blank lines (a blank line holds only spaces, tabs
           or '\\r').

Tokenizers:
  --tokenizer DIR  a Hugging Face tokenizer loaded from the local directory
                   DIR with transformers.AutoTokenizer.from_pretrained(DIR)
                   (nothing is downloaded). vocab_size = len(tokenizer).
                   text: encoded without special tokens, then the tokenizer's
                     EOS is appended when it has one. A .txt block is the text
                     of its lines, without the blank lines after it.
                   prompt-completion: encode(prompt + completion) by the same
                     rule; the prompt is its first len(encode(prompt)) tokens
                     (when those are not a prefix of the joint encoding, a
                     warning names the first such line, as TRL warns).
                   messages: tokenizer.apply_chat_template(messages) with DIR's
                     own chat template; no EOS is appended.
                   conversational prompt-completion: apply_chat_template(
                     prompt + completion); the prompt is its first
                     len(apply_chat_template(prompt, add_generation_prompt=
                     True)) tokens (same warning).
  --byte-level     one token per byte, vocab_size 256. A .txt document is the
                   bytes from the start of its block to the start of the next
                   block (blank lines included), exactly as weft's C++
                   WriteByteLevelTokenFile writes it; a .jsonl document is
                   the UTF-8 bytes of its field, or of its prompt followed by
                   its completion. Chat lines need --tokenizer (a template).

Loss mask (TRL's SFTConfig defaults):
  prompt-completion lines: 0 on the prompt's tokens, 1 on the completion's
    (and the EOS). --no-completion-only-loss makes them all 1.
  messages lines: all 1. --assistant-only-loss keeps only the assistant
    tokens, transformers' apply_chat_template(...,
    return_assistant_tokens_mask=True)["assistant_masks"]: the template must
    wrap them in {% generation %}...{% endgeneration %} and each chat (or
    conversational prompt-completion, where it is combined with the
    completion mask) must have some. It refuses non-chat inputs.
  text documents: all 1.
  A document whose mask is all 0 (nothing to learn) is dropped and counted.

Output (little-endian; .bin and .idx as trainer/token_file.h reads them):
  <prefix>.bin   tokens as uint16 when vocab_size <= 65536, else uint32.
  <prefix>.mask  only when some document is prompt-completion or messages
                 (even if the mask is all 1): b"WEFTMSK1", uint64 num_tokens,
                 then num_tokens bytes, each 0 or 1 (1: the token is a label
                 that counts in the loss). Otherwise a <prefix>.mask left by
                 an earlier run is deleted (it would apply to these tokens).
  <prefix>.idx   b"WEFTTOK1", uint32 version 1, uint32 bytes per token,
                 uint64 vocab_size, uint64 num_tokens, uint64 num_documents,
                 uint64 document starts [num_documents + 1].
Each is written to a temporary file, fsynced and renamed into place, in the
order .bin, .mask, .idx.

Examples:
  .venv/bin/python tools/tokenize_data.py --byte-level book.txt -o data/book
  .venv/bin/python tools/tokenize_data.py --tokenizer models/llama \\
      --field text train.jsonl -o data/train
  .venv/bin/python tools/tokenize_data.py --tokenizer models/qwen \\
      --assistant-only-loss chats.jsonl -o data/chats
  # then in the trainer's YAML: data: {path: data/train}

--dump-json FILE also writes {"vocab_size", "document_starts", "tokens"}, and
"loss_mask" when a .mask is written, as JSON (for tests; small inputs only).
"""

import argparse
import json
import os
import re
import sys

import numpy as np

MAGIC = b"WEFTTOK1"
MASK_MAGIC = b"WEFTMSK1"
VERSION = 1
MESSAGES = 'a list of {"role", "content"} objects'


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


def type_name(value):
    return {dict: "an object", list: "a list", str: "a string", type(None): "null",
            bool: "a boolean", int: "a number", float: "a number"}.get(type(value),
                                                                     type(value).__name__)


def formats(field):
    return (f'expected an object with "prompt" and "completion", with "messages", or with '
            f'{json.dumps(field)}')


def check_messages(where, key, value):
    if not isinstance(value, list) or not value:
        found = "an empty list" if value == [] else type_name(value)
        sys.exit(f"{where}: \"{key}\" is {found} (expected {MESSAGES})")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            found = (f"an object without a string \"role\" (keys {sorted(m)})"
                     if isinstance(m, dict) else type_name(m))
            sys.exit(f"{where}: \"{key}\"[{i}] is {found} (expected {MESSAGES})")
        if not isinstance(m.get("content"), (str, list, type(None))):
            sys.exit(f"{where}: \"{key}\"[{i}][\"content\"] is {type_name(m['content'])} "
                     f"(expected a string, a list of content parts or null)")


def classify(where, obj, field):
    """(kind, payload) of one .jsonl object, in TRL's order of detection.

    kind: "prompt" (payload (prompt, completion) strings), "chat_prompt"
    ((prompt, completion, tools): message lists and the "tools" or None),
    "messages" ((messages, tools)) or "text" (a string).
    """
    if not isinstance(obj, dict):
        sys.exit(f"{where}: found {type_name(obj)} ({formats(field)})")
    tools = obj.get("tools")
    if not isinstance(tools, (list, type(None))):
        sys.exit(f"{where}: \"tools\" is {type_name(tools)} (expected a list of JSON schemas)")
    if "prompt" in obj or "completion" in obj:
        if "prompt" not in obj or "completion" not in obj:
            has, lacks = ("prompt", "completion") if "prompt" in obj else ("completion", "prompt")
            sys.exit(f"{where}: \"{has}\" without \"{lacks}\" (expected both)")
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return "prompt", (prompt, completion)
        if isinstance(prompt, list) and isinstance(completion, list):
            check_messages(where, "prompt", prompt)
            check_messages(where, "completion", completion)
            return "chat_prompt", (prompt, completion, tools)
        sys.exit(f"{where}: \"prompt\" is {type_name(prompt)} and \"completion\" is "
                 f"{type_name(completion)} (expected two strings, or two lists of "
                 f"{{\"role\", \"content\"}} objects)")
    if "messages" in obj:
        check_messages(where, "messages", obj["messages"])
        return "messages", (obj["messages"], tools)
    if field in obj:
        text = obj[field]
        if not isinstance(text, str):
            sys.exit(f"{where}: field {field!r} is {type_name(text)} (expected a string)")
        return "text", text
    sys.exit(f"{where}: an object with keys {sorted(obj)} ({formats(field)}; see --field)")


def documents(path, field, byte_level):
    """Yields (where, kind, payload) for each document of `path`.

    where is "path:line"; kind and payload are classify()'s, except that a
    --byte-level text is bytes.
    """
    if path.endswith(".jsonl"):
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{where}: invalid JSON: {e}")
                kind, payload = classify(where, obj, field)
                if byte_level and kind == "text":
                    payload = payload.encode("utf-8")
                yield where, kind, payload
    else:
        with open(path, "rb") as f:
            data = f.read()
        lineno, counted = 1, 0
        for start, end, nxt in text_blocks(data):
            lineno += data.count(b"\n", counted, start)
            counted = start
            where = f"{path}:{lineno}"
            if byte_level:
                yield where, "text", data[start:nxt]
            else:
                yield where, "text", data[start:end].decode("utf-8")


def write_atomic(path, chunks):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


def fsync_dir(path):
    d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(d)
    finally:
        os.close(d)


def write_token_file(prefix, tokens, starts, vocab_size, mask=None):
    """Writes <prefix>.bin, <prefix>.mask (when mask is not None) and
    <prefix>.idx, in that order; returns bytes per token. Without a mask, a
    <prefix>.mask from an earlier run is deleted first."""
    dtype = np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        sys.exit(f"token {int(tokens.max())} is out of range (expected < vocab_size {vocab_size})")
    if mask is None and os.path.lexists(prefix + ".mask"):
        os.remove(prefix + ".mask")  # a stale mask would apply to the new tokens
        fsync_dir(prefix + ".mask")
    header = MAGIC + np.array([VERSION, dtype.itemsize], dtype="<u4").tobytes()
    header += np.array([vocab_size, tokens.size, len(starts) - 1], dtype="<u8").tobytes()
    write_atomic(prefix + ".bin", [tokens.astype(dtype).tobytes()])
    if mask is not None:
        assert mask.size == tokens.size
        write_atomic(prefix + ".mask", [MASK_MAGIC, np.array([mask.size], dtype="<u8").tobytes(),
                                        mask.astype(np.uint8).tobytes()])
    write_atomic(prefix + ".idx", [header, np.asarray(starts, dtype="<u8").tobytes()])
    return dtype.itemsize


class ByteEncoder:
    """--byte-level: one token per byte, no EOS, no chat template."""

    vocab_size = 256

    def __init__(self, args):
        self.args = args

    @staticmethod
    def ids(data):
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def encode(self, where, kind, payload):
        """(token ids, loss mask) of one document."""
        if kind == "text":
            ids = self.ids(payload)
            return ids, np.ones(ids.size, dtype=np.uint8)
        if kind == "prompt":
            prompt, completion = (self.ids(s.encode("utf-8")) for s in payload)
            mask = np.ones(prompt.size + completion.size, dtype=np.uint8)
            if self.args.completion_only_loss:
                mask[:prompt.size] = 0
            return np.concatenate([prompt, completion]), mask
        key = "messages" if kind == "messages" else "prompt"
        sys.exit(f"{where}: a chat line (a \"{key}\" list) with --byte-level (expected a text or "
                 f"string prompt/completion line; a chat needs --tokenizer and its chat template)")


class TokenizerEncoder:
    """--tokenizer DIR: the tokenizer's encoding and chat template."""

    def __init__(self, args):
        self.args = args
        if not os.path.isdir(args.tokenizer):
            sys.exit(f"--tokenizer {args.tokenizer}: not a directory (expected a local Hugging "
                     f"Face tokenizer directory)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer  # slow import: only when needed
        self.tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        self.vocab_size = len(self.tok)
        self.eos = self.tok.eos_token_id
        self.warned_prefix = False

    def text_ids(self, text):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids + [self.eos] if self.eos is not None else ids

    def chat(self, where, messages, tools, assistant_masks=False, add_generation_prompt=False):
        """apply_chat_template's dict for `messages`, exiting on a template error."""
        if self.tok.chat_template is None:
            sys.exit(f"{where}: tokenizer {self.args.tokenizer} has no chat_template (expected one "
                     f"in its tokenizer_config.json or chat_template.jinja to format chats)")
        try:
            template = self.tok.get_chat_template(None, tools)
            if assistant_masks and not re.search(r"\{\%-?\s*generation\s*-?\%\}", template):
                sys.exit(f"{where}: --assistant-only-loss, but the chat template of "
                         f"{self.args.tokenizer} has no {{% generation %}} (expected the "
                         f"assistant turns wrapped in {{% generation %}}...{{% endgeneration %}})")
            return self.tok.apply_chat_template(
                messages, tools=tools, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=assistant_masks,
                add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja2 errors and the template's raise_exception
            sys.exit(f"{where}: the chat template of {self.args.tokenizer} failed: "
                     f"{type(e).__name__}: {e} (expected a chat it accepts)")

    def prompt_length(self, where, prompt_ids, ids):
        if ids[:len(prompt_ids)] != prompt_ids and not self.warned_prefix:
            self.warned_prefix = True
            print(f"{where}: warning: the prompt's {len(prompt_ids)} tokens are not a prefix of "
                  f"the prompt+completion tokens (the tokenizer merges across the boundary); "
                  f"masking the first {len(prompt_ids)} anyway, as TRL does (warned once)",
                  file=sys.stderr)
        return len(prompt_ids)

    def assistant_mask(self, where, out):
        mask = np.asarray(out["assistant_masks"], dtype=np.uint8)
        if not mask.any():
            sys.exit(f"{where}: --assistant-only-loss, but the chat has no assistant tokens "
                     f"(expected an assistant turn inside the template's {{% generation %}})")
        return mask

    def encode(self, where, kind, payload):
        """(token ids, loss mask) of one document."""
        args = self.args
        if kind in ("text", "prompt") and args.assistant_only_loss:
            sys.exit(f"{where}: a {'text' if kind == 'text' else 'string prompt/completion'} "
                     f"document with --assistant-only-loss (expected \"messages\" or "
                     f"conversational prompt/completion lines: only chats have assistant turns)")
        if kind == "text":
            ids = self.text_ids(payload)
            return np.asarray(ids, dtype=np.int64), np.ones(len(ids), dtype=np.uint8)
        if kind == "prompt":
            prompt, completion = payload
            ids = self.text_ids(prompt + completion)
            n = self.prompt_length(where, self.tok(prompt, add_special_tokens=False)["input_ids"],
                                   ids)
            mask = np.ones(len(ids), dtype=np.uint8)
            if args.completion_only_loss:
                mask[:n] = 0
            return np.asarray(ids, dtype=np.int64), mask
        if kind == "messages":
            messages, tools = payload
            out = self.chat(where, messages, tools, args.assistant_only_loss)
            ids = list(out["input_ids"])
            if args.assistant_only_loss:
                return np.asarray(ids, dtype=np.int64), self.assistant_mask(where, out)
            return np.asarray(ids, dtype=np.int64), np.ones(len(ids), dtype=np.uint8)
        prompt, completion, tools = payload  # chat_prompt
        prompt_ids = list(self.chat(where, prompt, tools, add_generation_prompt=True)["input_ids"])
        out = self.chat(where, prompt + completion, tools, args.assistant_only_loss)
        ids = list(out["input_ids"])
        n = self.prompt_length(where, prompt_ids, ids)
        mask = (self.assistant_mask(where, out) if args.assistant_only_loss
                else np.ones(len(ids), dtype=np.uint8))
        if args.completion_only_loss:
            mask[:n] = 0
        return np.asarray(ids, dtype=np.int64), mask


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help=".jsonl or text files")
    p.add_argument("-o", "--output", required=True, metavar="PREFIX",
                   help="writes PREFIX.bin and PREFIX.idx (and PREFIX.mask for instruction data)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokenizer", metavar="DIR", help="local Hugging Face tokenizer directory")
    g.add_argument("--byte-level", action="store_true", help="one token per byte (vocab 256)")
    p.add_argument("--field", default="text", help="the .jsonl field holding the text (default: text)")
    p.add_argument("--no-completion-only-loss", dest="completion_only_loss", action="store_false",
                   help="prompt-completion lines: the prompt counts in the loss too")
    p.add_argument("--assistant-only-loss", action="store_true",
                   help="chats: only the assistant tokens ({%% generation %%} in the chat "
                        "template) count in the loss")
    p.add_argument("--dump-json", metavar="FILE",
                   help="also write vocab_size, document_starts, tokens (and loss_mask) as JSON")
    args = p.parse_args(argv)
    if args.byte_level and args.assistant_only_loss:
        sys.exit("--assistant-only-loss with --byte-level (expected --tokenizer: the assistant "
                 "tokens are marked by a chat template)")

    encoder = ByteEncoder(args) if args.byte_level else TokenizerEncoder(args)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(out_dir, exist_ok=True)  # -o data/train: data/ may not exist yet
    except OSError as e:
        sys.exit(f"-o {args.output}: cannot create {out_dir} ({e.strerror})")
    parts, masks, starts = [], [], [0]
    has_mask = False  # some document is prompt-completion or a chat
    dropped = 0
    for path in args.inputs:
        for where, kind, payload in documents(path, args.field, args.byte_level):
            has_mask |= kind != "text"
            ids, mask = encoder.encode(where, kind, payload)
            if ids.size == 0:
                continue  # an empty document has no tokens and no boundary
            if not mask.any():
                dropped += 1  # nothing to learn (TRL drops fully masked examples too)
                continue
            parts.append(ids)
            masks.append(mask)
            starts.append(starts[-1] + int(ids.size))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    mask = None
    if has_mask:
        mask = np.concatenate(masks) if masks else np.zeros(0, dtype=np.uint8)
    width = write_token_file(args.output, tokens, starts, encoder.vocab_size, mask)
    if args.dump_json:
        dump = {"vocab_size": encoder.vocab_size, "document_starts": starts,
                "tokens": tokens.tolist()}
        if mask is not None:
            dump["loss_mask"] = mask.tolist()
        with open(args.dump_json, "w") as f:
            json.dump(dump, f)
            f.write("\n")
    summary = (f"{args.output}: {tokens.size} tokens, {len(starts) - 1} documents, "
               f"vocab_size {encoder.vocab_size}, {width} bytes per token")
    if mask is not None:
        summary += f", {int(mask.sum())} of {tokens.size} tokens in the loss"
        if dropped:
            summary += f", {dropped} documents without loss tokens dropped"
    print(summary)


if __name__ == "__main__":
    main()
