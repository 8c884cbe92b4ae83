"""Repository root conftest.

Its presence makes the rootdir importable, so ``suites/`` can import
``onboard`` in a plain checkout and inside containers, where the checkout is
mounted read-only and nothing of it is installed.  The pytest-hil plugin
itself is loaded through its ``pytest11`` entry point, never from here.
"""
