"""Command-line commands of each family, registered by :mod:`underhood.cli`."""
