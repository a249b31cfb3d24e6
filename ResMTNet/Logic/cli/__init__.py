"""The ``resmtnet`` command: the entry point and one module per sub-command."""
