"""Sync jobs and the ``ferry`` command line: everything that knows about users."""
