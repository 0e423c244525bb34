"""The ``ferry`` console script's entry point.

The command starts with the cyclic collector off: loading its modules makes a
hundred thousand objects and no garbage, and the collector's passes over them cost
8-10 ms of every start. :func:`~conda_ferry.mirror.cli.collect_from_here` turns it
on again once the command's modules are in.

``ferry --version`` alone is answered here, before the command line's modules load
(click, msgspec, the gateways: 0.1-0.2 s in a slow hour), in click's own words.
"""

import gc
import os
import sys


def console() -> None:
    gc.disable()
    if sys.argv[1:] == ["--version"]:
        from conda_ferry import __version__

        try:
            os.write(1, f"ferry, version {__version__}\n".encode())
            os._exit(0)
        except OSError:
            pass  # not written: the command line reports that, as for all its output
    from .cli import console as command

    command()
