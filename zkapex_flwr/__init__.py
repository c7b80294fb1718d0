"""zkapex-flwr: verified machine unlearning (ZK-APEX) for Flower fleets.

Where things are:
* the math — :mod:`zkapex_flwr.unlearning` (scope/blocks, Fisher, provider mask, Group-OBS);
* data and models — :mod:`zkapex_flwr.data`, :mod:`zkapex_flwr.models`;
* the one-client pipeline and its baselines — :mod:`zkapex_flwr.pipeline` (``zkapex local``).
"""

__version__ = "0.1.0"
