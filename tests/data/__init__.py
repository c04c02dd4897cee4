"""Files tests share."""

from pathlib import Path

# An anonymisation policy that changes nothing, for tests that compare stored values with
# the published ones (the shipped policy withholds small and short-window crowd counts).
PASSTHROUGH = Path(__file__).with_name("policy-passthrough.toml")
