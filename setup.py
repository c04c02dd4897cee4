"""Only the optional C part lives here; everything else is in pyproject.toml.

gateway._speedups decodes and formats a frame's metric section in one pass.  `optional`:
where no C compiler is at hand (a slim container image) the install goes on without it and
the gateway uses the same logic in Python (gateway/verify.py), a little slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway._speedups", ["gateway/_speedups.c"], optional=True)])
