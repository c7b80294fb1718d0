"""The client: a Flower mod that adds verified unlearning to a ClientApp, its per-node state, a ready app."""

from .mod import UnlearningSetup, VerifiedUnlearningMod, choose_circuit
from .state import MissingState, NodeState

__all__ = ["VerifiedUnlearningMod", "UnlearningSetup", "choose_circuit", "NodeState", "MissingState"]
