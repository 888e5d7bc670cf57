#!/usr/bin/env python3
"""Makes examples/sft_tiny/data/tempest_replies.jsonl: instruction data in
TRL's prompt/completion format from The Tempest (Shakespeare, public
domain; examples/finetune_tiny/data/the_tempest.txt).

Each example is one exchange of the play: the prompt is a speech (its
speaker line and first two lines of verse), the completion is the reply
(the next speaker and the first two lines of theirs). Fine-tuning with
completion-only loss teaches the model to answer a line with the next one,
never to repeat the prompt. Deterministic; no dependencies.

    python3 examples/sft_tiny/make_data.py
"""
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
PLAY = os.path.join(HERE, "..", "finetune_tiny", "data", "the_tempest.txt")
OUT = os.path.join(HERE, "data", "tempest_replies.jsonl")


def speeches(text):
    """(speaker, [lines]) in order; stage directions and headings dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
        lines = [l for l in lines if not l.startswith("[")]
        if len(lines) < 2 or not lines[0].endswith(".") or len(lines[0]) > 30:
            continue
        if lines[0].startswith(("ACT ", "SCENE ")):
            continue
        out.append((lines[0], lines[1:3]))
    return out


def main():
    with open(PLAY, encoding="utf-8") as f:
        said = speeches(f.read())
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    n = 0
    with open(OUT, "w", encoding="utf-8") as f:
        for (who, lines), (reply_who, reply) in zip(said, said[1:]):
            if who == reply_who:
                continue
            prompt = who + "\n" + "\n".join(lines) + "\n"
            completion = reply_who + "\n" + "\n".join(reply) + "\n"
            if len(prompt) + len(completion) > 200:
                continue
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
            n += 1
    print(f"{OUT}: {n} examples")


if __name__ == "__main__":
    main()
