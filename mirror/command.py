"""The ``ferry`` console script's entry point.

The command starts with the cyclic collector off: loading its modules makes a
hundred thousand objects and no garbage, and the collector's passes over them cost
8-10 ms of every start. :func:`~conda_ferry.mirror.cli.collect_from_here` turns it
on again once the command's modules are in.
"""

import gc


def console() -> None:
    gc.disable()
    from .cli import console as command

    command()
