#!/usr/bin/env python3
"""Regenerates the token-file fixtures in this directory (see README.md).

  .venv/bin/python tests/data/tokens/make_fixtures.py

1. tokenizer/: a tiny BPE tokenizer (vocab 120, whitespace pre-tokenizer,
   <unk> and </s> as EOS) trained on sample.txt with the `tokenizers`
   library and saved with PreTrainedTokenizerFast.save_pretrained.
   chat_tokenizer/: the same tokenizer.json, and its tokenizer_config.json
   with CHAT_TEMPLATE (for tools/tokenize_data_test.sh).
2. Runs tools/tokenize_data.py on sample.txt twice:
   byte/      --byte-level              -> byte.{bin,idx,json}
   bpe/       --tokenizer tokenizer/    -> bpe.{bin,idx,json}
   and on sample.jsonl with the tokenizer -> jsonl.{bin,idx,json}.
   The .json files hold the ids the script wrote; trainer/token_file_test.cc
   checks TokenFile reads exactly those.
"""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
# ChatML's layout in the vocabulary's own tokens: a role line, the content,
# then EOS (</s>) where ChatML has <|im_end|>. The assistant turns are inside
# {% generation %} for apply_chat_template(return_assistant_tokens_mask=True).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'assistant\\n' }}{%- endif %}")


def build_tokenizer(out_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"],
                                  show_progress=False)
    tok.train([os.path.join(HERE, "sample.txt")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(out_dir)


def build_chat_tokenizer(tokenizer_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), out_dir)
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["chat_template"] = CHAT_TEMPLATE
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
        f.write("\n")


def tokenize(*args):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "tokenize_data.py"), *args]
    subprocess.run(cmd, check=True, cwd=HERE)


def main():
    build_tokenizer(os.path.join(HERE, "tokenizer"))
    build_chat_tokenizer(os.path.join(HERE, "tokenizer"), os.path.join(HERE, "chat_tokenizer"))
    tokenize("--byte-level", "sample.txt", "-o", "byte", "--dump-json", "byte.json")
    tokenize("--tokenizer", "tokenizer", "sample.txt", "-o", "bpe", "--dump-json", "bpe.json")
    tokenize("--tokenizer", "tokenizer", "sample.jsonl", "-o", "jsonl", "--dump-json",
             "jsonl.json")


if __name__ == "__main__":
    main()
