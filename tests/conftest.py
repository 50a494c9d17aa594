"""Test-session settings."""

import os

# The commands replay a tiny trace in Python (kvmcache/jit.py) when the kernel is not
# loaded yet; in this long-lived process that would turn every later kernel test into Python.
# tests/test_golden.py checks the Python mode in a child process of its own.
os.environ["KVMCACHE_JIT"] = "1"
