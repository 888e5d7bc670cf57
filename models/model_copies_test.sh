#!/usr/bin/env bash
# The copy checker (tools/check_model_copies.py): every `// Copied from`
# block of the model files equals its renamed source, and a drifted copy is
# caught (file:line, what was found and expected) and repaired by --fix.
set -uo pipefail
checker="tools/check_model_copies.py"
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. The tree as it is.
out="$(python3 "$checker" --root . 2>&1)" || fail "the model files drifted from their sources: $out"
count="$(echo "$out" | sed -n 's/^\([0-9]*\) marked copies.*/\1/p')"
[[ "$count" -ge 10 ]] || fail "expected at least 10 marked copies, found: $out"

# 2. A drifted copy fails, naming the file and line.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/models"
cp models/*.cc "$tmp/models/"
line="$(grep -n '^// Copied from models/llama.cc LlamaMLP with Llama->Mistral' "$tmp/models/mistral.cc" | cut -d: -f1)"
[[ -n "$line" ]] || fail "mistral.cc has no marked copy of LlamaMLP"
sed -i 's/Activation(act_, gate_proj->forward(in\[0\]))/Activation(act_, up_proj->forward(in[0]))/' "$tmp/models/mistral.cc"
out="$(python3 "$checker" --root "$tmp" 2>&1)" && fail "a drifted copy passed: $out"
echo "$out" | grep -q "^models/mistral.cc:$line: the copy of models/llama.cc LlamaMLP with Llama->Mistral differs from its source" ||
  fail "the error does not name mistral.cc:$line: $out"

# 3. A marker naming a class that does not exist fails.
cp models/mistral.cc "$tmp/models/mistral.cc"
sed -i 's/^\/\/ Copied from models\/llama.cc LlamaMLP /\/\/ Copied from models\/llama.cc LlamaNope /' "$tmp/models/mistral.cc"
out="$(python3 "$checker" --root "$tmp" 2>&1)" && fail "a marker of a missing class passed: $out"
echo "$out" | grep -q "models/llama.cc has no definition of LlamaNope" || fail "unexpected error: $out"

# 4. --fix carries the source into the copy.
cp models/mistral.cc "$tmp/models/mistral.cc"
sed -i 's/Activation(act_, gate_proj->forward(in\[0\]))/Activation(act_, up_proj->forward(in[0]))/' "$tmp/models/mistral.cc"
python3 "$checker" --root "$tmp" --fix >/dev/null 2>&1 || fail "--fix failed"
out="$(python3 "$checker" --root "$tmp" 2>&1)" || fail "--fix left a drift: $out"
echo "PASS"
