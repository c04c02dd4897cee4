"""Only the optional C part lives here; everything else is in pyproject.toml.

gateway._speedups runs the whole path of a good frame (header, key, metrics, HMAC tag,
replay window) in one call, with OpenSSL's SHA-256 (libcrypto, which Python's hashlib
already uses; the build needs its headers: libssl-dev).  `optional`: where no C compiler or
headers are at hand the install goes on without it and the gateway runs the same logic in
Python (gateway/verify.py), at about a third of the rate.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway._speedups", ["gateway/_speedups.c"], libraries=["crypto"],
                             optional=True)])
