"""The client: Flower mods that add unlearning to a ClientApp, one line each, and their per-node state.

* :class:`VerifiedUnlearningMod` — ZK-APEX: masked Group-OBS update proven with EZKL (:mod:`.mod`);
* :class:`MPUMod` — MPU: the node unlearns its own forget set on perturbed copies of θ (:mod:`.mpu`);
* :class:`MunkeyMod` — MUNKEY: key deletion proven on the committed memory (:mod:`.munkey`).
"""

from .mod import UnlearningSetup, VerifiedUnlearningMod, choose_circuit
from .mpu import MPU_CHEATS, MPUMod, MPUSetup
from .munkey import MunkeyMod, MunkeySetup
from .state import MissingState, NodeState

__all__ = [
    "VerifiedUnlearningMod",
    "UnlearningSetup",
    "choose_circuit",
    "NodeState",
    "MissingState",
    "MPUMod",
    "MPUSetup",
    "MPU_CHEATS",
    "MunkeyMod",
    "MunkeySetup",
]
