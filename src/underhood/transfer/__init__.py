"""The transfer family: how general is each layer's representation.

- :func:`probe`: linear probes (Alain & Bengio 2016) on every stage's frozen features, against a randomly
  re-initialised copy and the raw pixels (:class:`ProbeResult`);
- :func:`cka` / :func:`linear_cka`: linear centred kernel alignment between two layers' features
  (Kornblith et al. 2019).
"""

from .cka import cka, linear_cka
from .probe import ProbeResult, logistic_regression, probe

__all__ = ["probe", "ProbeResult", "logistic_regression", "cka", "linear_cka"]
