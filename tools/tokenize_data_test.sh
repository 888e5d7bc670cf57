#!/usr/bin/env bash
# tools/tokenize_data.py: -o into a directory that does not exist yet
# creates it (it crashed with a traceback), and the files it writes open in
# weft (a byte-level token file trains). Instruction data (TRL's formats):
# the tokens and <prefix>.mask equal what transformers gives for them
# (prompt/completion, --no-completion-only-loss, chats with
# --assistant-only-loss, byte-level), a plain-text run deletes a stale .mask,
# and a malformed line is a one-line error.
set -uo pipefail
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/tokenize"
rm -rf "$work"
mkdir -p "$work"
tok=tests/data/tokens/tokenizer
chat_tok=tests/data/tokens/chat_tokenizer
printf 'To be, or not to be.\n\nThat is the question.\n' >"$work/book.txt"
out="$("$python" tools/tokenize_data.py --byte-level "$work/book.txt" -o "$work/new/dir/book" 2>&1)" ||
  { echo "FAIL: tokenize_data.py exited $?: $out"; exit 1; }
[[ -f "$work/new/dir/book.bin" && -f "$work/new/dir/book.idx" ]] ||
  { echo "FAIL: no token files under $work/new/dir: $out"; exit 1; }
[[ "$out" == "$work/new/dir/book: 44 tokens, 2 documents, vocab_size 256, 2 bytes per token" ]] ||
  { echo "FAIL: unexpected summary '$out'"; exit 1; }
[[ ! -e "$work/new/dir/book.mask" ]] || { echo "FAIL: plain text wrote a .mask"; exit 1; }

# run NAME ARGS...: tokenize_data.py ARGS -o $work/NAME --dump-json $work/NAME.json;
# stdout in $work/NAME.out, stderr in $work/NAME.err.
run() {
  local name="$1"; shift
  "$python" tools/tokenize_data.py "$@" -o "$work/$name" --dump-json "$work/$name.json" \
    >"$work/$name.out" 2>"$work/$name.err" ||
    { echo "FAIL: tokenize_data.py $* exited $?: $(cat "$work/$name.err")"; exit 1; }
}

# (a) prompt/completion; line 3's prompt is not a token prefix ("Al" + "ice"
# is one token "Alice"): one warning naming it, the mask still covers
# len(encode(prompt)) tokens. (b) the same with --no-completion-only-loss.
cat >"$work/pc.jsonl" <<'JSON'
{"prompt": "Was Alice reading the book?", "completion": " She was sitting by her sister."}
{"text": "Alice was very tired."}
{"prompt": "Al", "completion": "ice"}
{"prompt": "Al", "completion": "ice"}
JSON
run pc --tokenizer "$tok" "$work/pc.jsonl"
err="$(cat "$work/pc.err")"
[[ "$err" == "$work/pc.jsonl:3: warning: the prompt's 1 tokens are not a prefix"* &&
   "$err" != *$'\n'* ]] ||
  { echo "FAIL: (a) expected one prefix warning naming pc.jsonl:3, got '$err'"; exit 1; }
run pc_all --tokenizer "$tok" --no-completion-only-loss "$work/pc.jsonl"

# (c) chats with --assistant-only-loss; (c') conversational prompt/completion.
cat >"$work/chat.jsonl" <<'JSON'
{"messages": [{"role": "system", "content": "Be very short."}, {"role": "user", "content": "Was Alice reading the book?"}, {"role": "assistant", "content": "She was sitting by her sister."}, {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "A White Rabbit ran by."}]}
{"messages": [{"role": "user", "content": "Who ran by?"}, {"role": "assistant", "content": "A White Rabbit."}]}
JSON
run chat --tokenizer "$chat_tok" --assistant-only-loss "$work/chat.jsonl"
cat >"$work/chat_pc.jsonl" <<'JSON'
{"prompt": [{"role": "user", "content": "Was Alice reading the book?"}], "completion": [{"role": "assistant", "content": "She was sitting by her sister."}]}
JSON
run chat_pc --tokenizer "$chat_tok" "$work/chat_pc.jsonl"

# (f) byte-level prompt/completion: line 2 has nothing to learn and is dropped.
printf '%s\n' '{"prompt": "ab", "completion": "cd"}' '{"prompt": "xy", "completion": ""}' \
  '{"text": "ef"}' >"$work/bytes.jsonl"
run bytes --byte-level "$work/bytes.jsonl"
[[ "$(cat "$work/bytes.out")" == "$work/bytes: 6 tokens, 2 documents, vocab_size 256, 2 bytes per token, 4 of 6 tokens in the loss, 1 documents without loss tokens dropped" ]] ||
  { echo "FAIL: (f) unexpected summary '$(cat "$work/bytes.out")'"; exit 1; }

# The dumps and .mask files against transformers, computed here.
"$python" - "$work" "$tok" "$chat_tok" <<'PY' || exit 1
import json, sys
import numpy as np
from transformers import AutoTokenizer

work, tok_dir, chat_dir = sys.argv[1:]


def check(what, got, want):
    if got != want:
        sys.exit(f"FAIL: {what}: got {got}, expected {want}")


def check_run(name, docs, vocab_size):
    """docs: [(tokens, mask)] the run must have written."""
    dump = json.load(open(f"{work}/{name}.json"))
    tokens = [t for d in docs for t in d[0]]
    mask = [m for d in docs for m in d[1]]
    starts = list(np.cumsum([0] + [len(d[0]) for d in docs]))
    check(f"{name} tokens", dump["tokens"], tokens)
    check(f"{name} loss_mask", dump["loss_mask"], mask)
    check(f"{name} document_starts", dump["document_starts"], starts)
    raw = open(f"{work}/{name}.mask", "rb").read()
    check(f"{name}.mask header", raw[:16], b"WEFTMSK1" + len(mask).to_bytes(8, "little"))
    check(f"{name}.mask bytes", list(raw[16:]), mask)
    check(f"{name} summary", open(f"{work}/{name}.out").read().strip(),
          f"{work}/{name}: {len(tokens)} tokens, {len(docs)} documents, vocab_size {vocab_size}, "
          f"2 bytes per token, {sum(mask)} of {len(tokens)} tokens in the loss")


tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
eos = tok.eos_token_id
pc, pc_all = [], []
for line in open(f"{work}/pc.jsonl"):
    ex = json.loads(line)
    if "text" in ex:
        ids = enc(ex["text"]) + [eos]
        pc.append((ids, [1] * len(ids)))
    else:  # (a): 0 over encode(prompt), 1 after (the completion and EOS)
        ids, n = enc(ex["prompt"] + ex["completion"]) + [eos], len(enc(ex["prompt"]))
        pc.append((ids, [0] * n + [1] * (len(ids) - n)))
    pc_all.append((ids, [1] * len(ids)))  # (b)
check("(a) line 3's prompt is not a token prefix", enc("Alice")[:len(enc("Al"))] == enc("Al"),
      False)
check_run("pc", pc, len(tok))
check_run("pc_all", pc_all, len(tok))

chat_tok = AutoTokenizer.from_pretrained(chat_dir, local_files_only=True)
chats = []
for line in open(f"{work}/chat.jsonl"):  # (c)
    out = chat_tok.apply_chat_template(json.loads(line)["messages"], tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=True)
    check("(c) the fixture's template marks assistant tokens", 0 < sum(out["assistant_masks"])
          < len(out["input_ids"]), True)
    chats.append((out["input_ids"], out["assistant_masks"]))
check_run("chat", chats, len(chat_tok))
ex = json.loads(open(f"{work}/chat_pc.jsonl").read())  # (c')
prompt = chat_tok.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
ids = chat_tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True,
                                   return_dict=True)["input_ids"]
check("(c') the prompt is a prefix", ids[:len(prompt)], prompt)
check_run("chat_pc", [(ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt)))], len(chat_tok))

dump = json.load(open(f"{work}/bytes.json"))  # (f)
check("(f) tokens", dump["tokens"], list(b"abcdef"))
check("(f) loss_mask", dump["loss_mask"], [0, 0, 1, 1, 1, 1])
check("(f) document_starts", dump["document_starts"], [0, 4, 6])
PY

# (d) plain text to a prefix that has a .mask deletes it.
out="$("$python" tools/tokenize_data.py --byte-level "$work/book.txt" -o "$work/pc" 2>&1)" ||
  { echo "FAIL: (d) tokenize_data.py exited $?: $out"; exit 1; }
[[ "$out" == "$work/pc: 44 tokens, 2 documents, vocab_size 256, 2 bytes per token" ]] ||
  { echo "FAIL: (d) unexpected summary '$out'"; exit 1; }
[[ ! -e "$work/pc.mask" ]] || { echo "FAIL: (d) a stale $work/pc.mask was left"; exit 1; }

# (e) a malformed line: one line naming file:line, what it found and expects.
printf '%s\n' '{"text": "ok"}' '{"prompt": "a", "completion": ["b"]}' >"$work/bad.jsonl"
out="$("$python" tools/tokenize_data.py --byte-level "$work/bad.jsonl" -o "$work/bad" 2>&1)" &&
  { echo "FAIL: (e) a malformed line was accepted: $out"; exit 1; }
want="$work/bad.jsonl:2: \"prompt\" is a string and \"completion\" is a list"
want+=" (expected two strings, or two lists of {\"role\", \"content\"} objects)"
[[ "$out" == "$want" ]] || { echo "FAIL: (e) got '$out', expected '$want'"; exit 1; }
echo '{"messages": [{"role": "user", "content": "Hi"}]}' >"$work/bad_chat.jsonl"
out="$("$python" tools/tokenize_data.py --byte-level "$work/bad_chat.jsonl" -o "$work/bad" 2>&1)" &&
  { echo "FAIL: (e) --byte-level accepted a chat: $out"; exit 1; }
[[ "$out" == "$work/bad_chat.jsonl:1: a chat line (a \"messages\" list) with --byte-level"* &&
   "$out" != *$'\n'* ]] || { echo "FAIL: (e) unexpected --byte-level chat error '$out'"; exit 1; }
echo PASS
