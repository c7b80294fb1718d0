"""The provider: Flower strategies that add verified unlearning to any strategy (docs/protocol.md §2, §4)."""
from .dispatch import Outcome, dispatch
from .masking import DeletionRequest, SaliencyMasker
from .verified_unlearning import UnlearningConfig, VerifiedUnlearning

__all__ = ["VerifiedUnlearning", "UnlearningConfig", "DeletionRequest", "SaliencyMasker", "dispatch", "Outcome"]
