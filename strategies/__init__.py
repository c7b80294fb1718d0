"""The provider: Flower strategies that add verified unlearning to any strategy, and their store.

* :class:`VerifiedUnlearning` — the Strategy (docs/protocol.md §2, §4), :mod:`.verified_unlearning`;
* :class:`SaliencyMasker`, :class:`DeletionRequest` — what to delete, :mod:`.masking`;
* :func:`dispatch` — deadlines and retries of one message round, :mod:`.dispatch`;
* :func:`run_rounds` — Flower's round loop with a deletion phase after every round, :mod:`.rounds`;
* the durable state — :mod:`.store` (one SQLite file), :mod:`.registry` (commitments), :mod:`.ledger` (verdicts);
* :class:`UnlearningResult` — what :meth:`VerifiedUnlearning.start` returns, :mod:`.result`;
* :class:`MPUUnlearning` — client-held forget sets on perturbed copies of θ (docs/mpu.md), :mod:`.mpu`;
* :class:`MunkeyUnlearning` — key deletion on MUNKEY models, proven on committed key sets
  (docs/munkey.md), :mod:`.munkey`.
"""

from .dispatch import Outcome, dispatch
from .ledger import Ledger
from .masking import DeletionRequest, SaliencyMasker
from .mpu import MPURequest, MPUResult, MPUUnlearning
from .munkey import MunkeyConfig, MunkeyRequest, MunkeyUnlearning
from .registry import Registry
from .result import DeletionRecord, UnlearningResult
from .rounds import run_rounds
from .verified_unlearning import UnlearningConfig, VerifiedUnlearning

__all__ = [
    "VerifiedUnlearning",
    "UnlearningConfig",
    "DeletionRequest",
    "SaliencyMasker",
    "dispatch",
    "Outcome",
    "UnlearningResult",
    "DeletionRecord",
    "Ledger",
    "Registry",
    "run_rounds",
    "MPUUnlearning",
    "MPURequest",
    "MPUResult",
    "MunkeyUnlearning",
    "MunkeyRequest",
    "MunkeyConfig",
]
