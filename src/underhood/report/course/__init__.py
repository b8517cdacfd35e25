"""``underhood course``: the five lecture decks' experiments, replayed on the built-in models.

Each topic module of this package registers experiments with :func:`.base.experiment`;
:func:`build` runs those of the chosen decks once each and writes one self-contained HTML page
per deck, plus an index.
"""
