"""The transfer family: how general is each layer's representation.

- :func:`probe`: linear probes (Alain & Bengio 2016) on every stage's frozen features, against a randomly
  re-initialised copy and the raw pixels (:class:`ProbeResult`);
- :func:`cka` / :func:`linear_cka`: linear centred kernel alignment between two layers' features
  (Kornblith et al. 2019);
- :func:`transfer_curve`: Yosinski et al. (2014)'s transfer grid (BnB, BnB+, AnB, AnB+ at every depth) for a
  built-in architecture (:class:`TransferResult`);
- :func:`finetune_curve`: a pre-trained model on new data, frozen against fine-tuned, cut after each layer
  (:class:`FinetuneResult`);
- :func:`probe_history` / :func:`probe_callback`: the probe curve at every weight snapshot of a training run
  (``train(..., checkpoint_every=N)``), one line per epoch (:class:`ProbeHistory`).
"""

from .cka import cka, linear_cka
from .curve import TransferResult, transfer_curve
from .finetune import FinetuneResult, finetune_curve
from .history import ProbeCallback, ProbeHistory, probe_callback, probe_history, probe_sets
from .probe import ProbeResult, logistic_regression, probe

__all__ = ["probe", "ProbeResult", "logistic_regression", "cka", "linear_cka", "transfer_curve", "TransferResult",
           "finetune_curve", "FinetuneResult", "probe_history", "probe_callback", "probe_sets", "ProbeHistory",
           "ProbeCallback"]
