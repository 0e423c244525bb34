"""``python -m conda_ferry``: the ``ferry`` command without its console script."""

from conda_ferry.mirror.command import console

console()
