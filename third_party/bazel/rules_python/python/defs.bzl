"""Offline stand-in for @rules_python//python:defs.bzl: Bazel 4.2.3's native rules."""

py_binary = native.py_binary
py_library = native.py_library
py_runtime = native.py_runtime
py_test = native.py_test
