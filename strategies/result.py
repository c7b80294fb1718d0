"""What a verified-unlearning run returns: Flower's :class:`Result` plus one record per deletion.

:class:`UnlearningResult` is a :class:`flwr.serverapp.strategy.Result` (final θg, the per-round
train/evaluate metrics of ClientApps and of the ServerApp's ``evaluate_fn``) with ``deletions``: for
each request served, when it ran, how many weights it masked, the verdict counts, who was quarantined
after it, and the evaluation of θg right before and right after the deletion. :meth:`save` writes
it as JSON (and θg as a torch state dict), so a run's outcome outlives the process.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result


def _record(rec: MetricRecord | dict | None) -> dict:
    return {} if rec is None else {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(rec).items()}


@dataclass
class DeletionRecord:
    """One served request: its verdicts and θg's evaluation right before and after it."""

    request_id: str
    after_round: int
    description: str = ""
    masked_weights: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)  # reason code -> nodes (latest outcome)
    quarantined: list[int] = field(default_factory=list)  # nodes quarantined after it
    evaluate_before: dict[str, MetricRecord] = field(default_factory=dict)  # "serverapp" / "clientapp"
    evaluate_after: dict[str, MetricRecord] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self) | {
            "evaluate_before": {k: _record(v) for k, v in self.evaluate_before.items()},
            "evaluate_after": {k: _record(v) for k, v in self.evaluate_after.items()},
        }
        out["quarantined"] = [int(n) for n in self.quarantined]
        return out


@dataclass
class UnlearningResult(Result):
    deletions: list[DeletionRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Everything but the arrays, as JSON-ready values (round numbers become string keys)."""
        per_round = {
            name: {str(r): _record(m) for r, m in getattr(self, name).items()}
            for name in ("train_metrics_clientapp", "evaluate_metrics_clientapp", "evaluate_metrics_serverapp")
        }
        return per_round | {"deletions": [d.to_dict() for d in self.deletions]}

    def save(self, folder: str | Path, *, arrays: bool = True) -> Path:
        """Write ``result.json`` (and ``global_model.pt``, θg's state dict) into ``folder``; returns the JSON path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "result.json"
        path.write_text(json.dumps(self.to_dict(), indent=1))
        if arrays and len(self.arrays):
            import torch

            torch.save(self.arrays.to_torch_state_dict(), folder / "global_model.pt")
        return path

    def __repr__(self) -> str:
        text = io.StringIO()
        text.write(super().__repr__())
        text.write("\nDeletions:\n")
        for d in self.deletions:
            text.write(
                f"\t{d.request_id} after round {d.after_round}: {d.masked_weights} masked weights, "
                f"verdicts {d.verdicts}\n"
            )
        return text.getvalue()
