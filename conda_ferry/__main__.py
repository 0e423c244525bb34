"""``python -m conda_ferry``: the ``ferry`` command without its console script."""

from conda_ferry.mirror.cli import console

console()
