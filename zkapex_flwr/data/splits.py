"""The data roles of one unlearning experiment (docs/protocol.md §2, §6)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .tensors import TensorData


@dataclass
class UnlearningSplits:
    """Every dataset role the one-client pipeline, its metrics and its baselines need.

    Provider side (source domain): ``provider_train`` trains θg and contains the forget set
    ``forget`` (D_f, as the provider can name it); ``provider_retain`` = provider_train minus D_f.
    Client side (the client's own domain): ``client_train`` personalizes θg into θp (and feeds the
    client's Fisher); ``client_retain`` is what the client keeps (its own data: the request covers D_f, the provider's
    named data, so for the offline datasets it equals client_train);
    ``client_test`` is held-out client data with the forget classes/samples excluded (personalization
    accuracy); ``client_forget`` is D_f seen in the client's domain (forget accuracy, MIA members) and
    ``client_unseen`` never-seen samples drawn like D_f (MIA non-members). ``provider_holdout`` (images
    only; None otherwise) is never-trained data the provider keeps for itself, disjoint from every other
    role: it sizes a sample request's mask (:func:`zkapex_flwr.unlearning.size_mask`).
    """

    task: str  # "image" or "lm"
    provider_train: TensorData
    provider_retain: TensorData
    forget: TensorData
    client_train: TensorData
    client_retain: TensorData
    client_test: TensorData
    client_forget: TensorData
    client_unseen: TensorData
    meta: dict = field(default_factory=dict)
    provider_holdout: TensorData | None = None

    def __post_init__(self) -> None:
        for name in (
            "provider_train",
            "provider_retain",
            "client_train",
            "client_retain",
            "client_test",
            "client_unseen",
        ):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"data split '{name}' is empty; use more data or fewer clients")
        if len(self.forget) == 0 or len(self.client_forget) == 0:
            raise ValueError("the forget set is empty: the request names no sample present in training")

    def sizes(self) -> dict[str, int]:
        return {
            k: len(getattr(self, k))
            for k in (
                "provider_train",
                "provider_retain",
                "forget",
                "client_train",
                "client_retain",
                "client_test",
                "client_forget",
                "client_unseen",
            )
        } | ({"provider_holdout": len(self.provider_holdout)} if self.provider_holdout is not None else {})
