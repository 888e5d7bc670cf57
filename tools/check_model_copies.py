#!/usr/bin/env python3
"""Keeps the copied blocks of weft's model files identical to their source.

One model, one file: each architecture's file reads top to bottom, so blocks
that are the same as another model's are copies, marked on the line before:

    // Copied from models/llama.cc LlamaMLP with Llama->Mistral
    class MistralMLP : public Module {
      ...
    };

A long marker may continue on the comment lines right below it. The block is
the class (or function) that starts on the next line and ends at
the first line that is `};` or `}` at column 0. The source is the block of the
same kind named after `Copied from` in the named file; `with A->B, C->D`
renames are applied to it in order. A copy must equal its renamed source up to
white space (clang-format may break lines differently for other names), as
transformers' `utils/check_copies.py` checks `# Copied from` blocks.

    python3 tools/check_model_copies.py            # check; exit 1 naming each drift
    python3 tools/check_model_copies.py --fix      # rewrite copies from their sources
    python3 tools/check_model_copies.py --root DIR # check another tree (tests)
"""
import argparse
import glob
import os
import re
import sys

MARKER = re.compile(r"^\s*// Copied from (\S+) (\w+)(?: with (.+))?$")


def block_at(lines, start):
    """The lines [start, end] of the block opening at `start`."""
    for end in range(start, len(lines)):
        if lines[end] in ("};", "}"):
            return start, end
    raise ValueError("no closing '};' or '}' at column 0")


def find_definition(lines, name):
    """The line where class/struct `name` (or a function `name(`) is defined."""
    pattern = re.compile(r"^(class|struct) %s\b|^\S.*\b%s\(" % (re.escape(name), re.escape(name)))
    for i, line in enumerate(lines):
        if pattern.match(line) and not line.rstrip().endswith(";"):
            return i
    return None


def renames_of(spec):
    if not spec:
        return []
    pairs = []
    for piece in spec.split(","):
        if "->" not in piece:
            raise ValueError("rename '%s' is not A->B" % piece.strip())
        a, b = piece.split("->", 1)
        pairs.append((a.strip(), b.strip()))
    return pairs


def squash(text):
    """The text without white space: copies may break lines differently."""
    return "".join(text.split())


def check(root, fix):
    problems = []
    files = sorted(glob.glob(os.path.join(root, "models", "*.cc")))
    cache = {}

    def read(rel):
        path = os.path.join(root, rel)
        if path not in cache:
            with open(path) as f:
                cache[path] = f.read().split("\n")
        return cache[path]

    count = 0
    for path in files:
        rel = os.path.relpath(path, root)
        lines = read(rel)
        changed = False
        i = 0
        while i < len(lines):
            m = MARKER.match(lines[i])
            if not m:
                i += 1
                continue
            count += 1
            where = "%s:%d" % (rel, i + 1)
            c1 = None
            source_file, name, spec = m.group(1), m.group(2), m.group(3)
            # A long marker continues on the comment lines below it
            # (clang-format wraps it).
            start = i + 1
            while start < len(lines) and lines[start].strip().startswith("//"):
                spec = (spec or "") + " " + lines[start].strip()[2:].strip()
                start += 1
            try:
                renames = renames_of(spec)
                if not os.path.exists(os.path.join(root, source_file)):
                    raise ValueError("source file %s does not exist" % source_file)
                src = read(source_file)
                at = find_definition(src, name)
                if at is None:
                    raise ValueError("%s has no definition of %s" % (source_file, name))
                s0, s1 = block_at(src, at)
                expected = "\n".join(src[s0 : s1 + 1])
                # Renames apply to the text with and without white space, so
                # one may span a line break of the source.
                expected_squashed = squash(expected)
                for a, b in renames:
                    expected = expected.replace(a, b)
                    expected_squashed = expected_squashed.replace(squash(a), squash(b))
                c0, c1 = block_at(lines, start)
            except ValueError as e:
                problems.append("%s: %s" % (where, e))
                i += 1
                continue
            actual = "\n".join(lines[c0 : c1 + 1])
            if squash(actual) != expected_squashed:
                if fix and squash(expected) == expected_squashed:
                    lines[c0 : c1 + 1] = expected.split("\n")
                    changed = True
                elif fix:
                    problems.append("%s: a rename spans a line break of the source: edit the copy "
                                    "by hand" % where)
                else:
                    # Name the first place that differs, with a little context.
                    a_sq = squash(actual)
                    k = 0
                    while k < min(len(a_sq), len(expected_squashed)) and a_sq[k] == expected_squashed[k]:
                        k += 1
                    found = a_sq[max(0, k - 30) : k + 30] or "(end of block)"
                    want = expected_squashed[max(0, k - 30) : k + 30] or "(end of block)"
                    problems.append(
                        "%s: the copy of %s %s%s differs from its source: found '%s', expected '%s' "
                        "(run tools/check_model_copies.py --fix, or change the source)"
                        % (where, source_file, name, " with " + spec if spec else "", found, want)
                    )
            i = c1 + 1 if c1 is not None else i + 1
        if changed:
            with open(path, "w") as f:
                f.write("\n".join(lines))
    return count, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--fix", action="store_true")
    args = parser.parse_args()
    count, problems = check(os.path.abspath(args.root), args.fix)
    for p in problems:
        print(p, file=sys.stderr)
    if problems and not args.fix:
        return 1
    print("%d marked copies %s" % (count, "fixed where needed" if args.fix else "match their sources"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
