"""MPU: multiple perturbed copies unlearning — a client unlearns its private forget set on perturbed,
reparameterized copies of the server's model, which never sees the forget set nor reveals θ.

* :mod:`~zkapex_flwr.mpu.perturb` — Pre-Process: :class:`MPUConfig`, zero-sum noise, :func:`make_copies`;
* :mod:`~zkapex_flwr.mpu.reparam` — function-preserving random reparameterizations (:class:`Reparam`);
* :mod:`~zkapex_flwr.mpu.denoise` — Post-Process: harmonic weights, :func:`post_process`;
* :mod:`~zkapex_flwr.mpu.run` — the whole loop in one process (:func:`mpu_unlearn`);
* :mod:`~zkapex_flwr.mpu.attack` — the client-side reconstruction attack and its error measure;
* :mod:`~zkapex_flwr.mpu.screen` — a consistency screen over one client's inverted updates.
"""

from .denoise import harmonic_weights, inverted_updates, post_process
from .perturb import DEFENCES, Copy, MPUConfig, make_copies, zero_sum_noise
from .reparam import Reparam, find_sites, random_reparam
from .run import mpu_unlearn
from .screen import consistency, flag

__all__ = [
    "DEFENCES",
    "Copy",
    "MPUConfig",
    "Reparam",
    "consistency",
    "find_sites",
    "flag",
    "harmonic_weights",
    "inverted_updates",
    "make_copies",
    "mpu_unlearn",
    "post_process",
    "random_reparam",
    "zero_sum_noise",
]
