# The node firmware package (MicroPython, also imported by host code).
#
# Start-up-only code lives in modules of its own: the config checks (config_check.py), the
# noise node's filter design and start-up, and its kernel texts (measure/noise_design.py,
# measure/noise_kernels.py); so does safe mode (node_safe.py), which a node in service
# never runs.  Their users import such a module for the job with use_module() and give it
# back with drop_module(), so its bytecode, strings and constants do not stay in the
# node's heap while it runs (bench/firmware_memory.py).  Frozen into the image
# (manifest.py) they would cost no heap either way.
#
# In:  a dotted module name.  Out: the module (use_module), or nothing (drop_module).
# On failure: ImportError from use_module, as from `import`; drop_module never raises.

import sys


def use_module(name):
    """Import the module `name` (dotted) and return it (not its top-level package)."""
    __import__(name)
    return sys.modules[name]


def drop_module(name):
    """Forget the module `name` (dotted), so that the collector takes back its code and
    constants once nothing else refers to them; use_module() loads it again."""
    module = sys.modules.pop(name, None)
    dot = name.rfind(".")
    if module is None or dot < 0:
        return
    package = sys.modules.get(name[:dot])
    child = name[dot + 1:]
    if package is not None and getattr(package, child, None) is module:
        delattr(package, child)  # importing a submodule made it an attribute of its package
