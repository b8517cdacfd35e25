"""Report sections, one module per family; :func:`underhood.report.discover` imports each."""
