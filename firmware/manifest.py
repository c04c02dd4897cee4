# MicroPython manifest of the node firmware: freezes the `firmware` package into a board
# image, so its bytecode, strings and qstrs are read from flash instead of being loaded into
# the heap (docs/firmware-image.md: how to build an image with it, and what it saves).
#
# In:  MicroPython's build (tools/makemanifest.py) executes this file with the directory it
#      is in as the working directory, and `package`, `require`, `metadata` defined.
# Out: every firmware/**/*.py but this file, frozen as the package `firmware`
#      (firmware.node, firmware.measure.noise, ...; firmware/main.py as firmware.main, which
#      the board's main.py stub imports), compiled by the port's mpy-cross for its
#      architecture; and the micropython-lib packages the firmware imports on a board.
# On failure: the build stops with makemanifest's error (a missing file, an unknown
#      micropython-lib package).
#
# Include it from a board manifest, after the port's own (docs/firmware-image.md):
#     include("$(PORT_DIR)/boards/manifest.py")     # what the stock image freezes
#     include("/path/to/checkout/firmware")         # this file
#
# Not a module: the installer does not copy it to a board, and nothing imports it.
# ruff: noqa: F821
# pyright: reportUndefinedVariable=false

import os

metadata(description="Dordt sensor node firmware")

# Imported by firmware/board.py on a board; stock images freeze some of them, and require()
# adds each package once however many manifests name it.
require("umqtt.simple")
require("ntptime")
require("ssl")


def _firmware_files():
    """Every .py under this directory, as paths relative to it, sorted; not this file."""
    found = []
    for folder, subfolders, names in os.walk("."):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        prefix = "" if folder == "." else folder[2:].replace("\\", "/") + "/"  # "./x" -> "x/"
        for name in sorted(names):
            if name.endswith(".py") and prefix + name != "manifest.py":
                found.append(prefix + name)
    return found


package("firmware", files=_firmware_files(), base_path="..")
