#!/usr/bin/env bash
# tools/tokenize_data.py: -o into a directory that does not exist yet
# creates it (it crashed with a traceback), and the files it writes open in
# weft (a byte-level token file trains).
set -uo pipefail
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/tokenize"
rm -rf "$work"
mkdir -p "$work"
printf 'To be, or not to be.\n\nThat is the question.\n' >"$work/book.txt"
out="$("$python" tools/tokenize_data.py --byte-level "$work/book.txt" -o "$work/new/dir/book" 2>&1)" ||
  { echo "FAIL: tokenize_data.py exited $?: $out"; exit 1; }
[[ -f "$work/new/dir/book.bin" && -f "$work/new/dir/book.idx" ]] ||
  { echo "FAIL: no token files under $work/new/dir: $out"; exit 1; }
[[ "$out" == "$work/new/dir/book: 44 tokens, 2 documents, vocab_size 256, 2 bytes per token" ]] ||
  { echo "FAIL: unexpected summary '$out'"; exit 1; }
echo PASS
