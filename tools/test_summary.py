#!/usr/bin/env python3
"""Counts test cases from a `bazel test` run and prints `N passed, N failed`.

Usage: test_summary.py LOG TESTLOGS [--extra NAME=passed|failed ...]

Reads Bazel's per-target lines from the log given as argv[1] and, for every
target that ran, the test.xml it left under bazel-testlogs/ (one <testcase>
per GoogleTest case; one for an sh_test). A target that failed to build, timed
out, or left no report counts as one failed case.
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

STATUS = re.compile(r"^(//\S+)\s+(?:\(cached\) )?(PASSED|FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD|FLAKY|INCOMPLETE|REMOTE FAILURE|FAILED TO RUN)\b")


def cases(xml_path):
    """(passed, failed, failed-names) from one test.xml."""
    root = ET.parse(xml_path).getroot()
    passed, failed, names = 0, 0, []
    for case in root.iter("testcase"):
        if case.get("status") == "notrun" or case.find("skipped") is not None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            names.append(f"{case.get('classname')}.{case.get('name')}")
        else:
            passed += 1
    return passed, failed, names


def main():
    log, testlogs = sys.argv[1], sys.argv[2]
    passed = failed = 0
    failed_names = []
    # --extra NAME=passed|failed: a check run outside Bazel (tools/fuzz.sh).
    args = sys.argv[3:]
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--extra":
            name, _, result = value.partition("=")
            if result == "passed":
                passed += 1
            else:
                failed += 1
                failed_names.append(name)
    seen = set()
    with open(log, errors="replace") as f:
        for line in f:
            m = STATUS.match(line.strip())
            if not m or m.group(1) in seen:
                continue
            target, status = m.group(1), m.group(2)
            seen.add(target)
            package, _, name = target[2:].partition(":")
            xml = os.path.join(testlogs, package, name, "test.xml")
            if status in ("PASSED", "FAILED", "FLAKY") and os.path.exists(xml):
                p, fl, names = cases(xml)
                if status != "PASSED" and fl == 0:
                    fl, names = 1, [target]  # crashed or timed out after its last case
                passed += p
                failed += fl
                failed_names += [f"{target} {n}" for n in names]
            else:
                failed += 1
                failed_names.append(f"{target} ({status})")
    for name in failed_names:
        print(f"FAILED: {name}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
