# Safe mode of a node (node.py): entered when the config is missing or invalid, the frame
# counter cannot be read, stored or is exhausted, or the sampler settings are wrong.  The
# node prints why (each problem, naming the key and the fix), keeps feeding the watchdog,
# re-reads the config every 30 s and starts when it is valid.  It sends no frame in safe
# mode: it opens no uplink and takes no counter.
#
# In:  the Node, and why it stops: a list of messages, or the exception that said so
#      (config.ConfigError: its problems; an OSError from the counter's flash file; any
#      other: its message).  Out: the node's state (safe_problems, uplink, counter, cfg)
#      and lines on the serial console.
# On failure: nothing raises out of here but what config.load() or Node._start() raise
#      (they do not for a bad config: that is what safe mode is for).
#
# RAM: loaded only when a node enters safe mode, and dropped when it leaves it
# (firmware.use_module / drop_module), so a node in service does not keep this code and
# its messages in its heap (docs/firmware-image.md).

import gc

from firmware import config, drop_module

RECHECK_MS = 30000  # how often the config is read again
REMIND_MS = 60000  # how often the reason is printed again
_NAME = "firmware.node_safe"


def problems_of(why):
    """The messages for `why` (see the header), one per problem."""
    if isinstance(why, list):
        return list(why)
    problems = getattr(why, "problems", None)  # a ConfigError
    if problems is not None:
        return list(problems)
    if isinstance(why, OSError):
        from firmware.node import _describe

        return ["cannot store the frame counter on flash (%s): check the flash file "
                "system, then reset" % _describe(why)]
    return [str(why)]


def enter(node, why, now):
    """Stop the node's sampler and uplink and start waiting for a valid config."""
    node.stop()
    node.uplink = None
    node.counter = None
    node.cfg = None
    node.safe_problems = problems_of(why)
    print("dordt: SAFE MODE, no frames are sent:")
    for problem in node.safe_problems:
        print("  " + problem)
    print("dordt: waiting for provisioning: write %s and the key file (the config is "
          "read again every %d s)" % (node.config_name, RECHECK_MS // 1000))
    clock = node.hw.clock
    node._safe_check = clock.ticks_add(now, RECHECK_MS)
    node._safe_remind = clock.ticks_add(now, REMIND_MS)
    gc.collect()


def step(node, now):
    """One pass of the safe-mode loop: re-read the config when due, start the node when it
    is valid (this module is dropped then), remind why otherwise.  Returns how long the
    node may sleep (ms)."""
    clock = node.hw.clock
    if clock.ticks_diff(now, node._safe_check) >= 0:
        node._safe_check = clock.ticks_add(now, RECHECK_MS)
        try:
            cfg = config.load(node.hw.flash, node.config_name)
        except config.ConfigError as exc:
            if exc.problems != node.safe_problems:
                enter(node, exc, now)
            gc.collect()
        else:
            print("dordt: the config is valid now; leaving safe mode")
            node.safe_problems = None
            drop_module(_NAME)
            node._start(cfg, now)
            return min(node._max_sleep, clock.ticks_diff(node._safe_check, now))
    if node.safe_problems is not None and clock.ticks_diff(now, node._safe_remind) >= 0:
        node._safe_remind = clock.ticks_add(now, REMIND_MS)
        print("dordt: safe mode: %s" % node.safe_problems[0])
    return min(node._max_sleep, clock.ticks_diff(node._safe_check, now))
