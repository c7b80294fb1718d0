"""The provider's ledger (PROTOCOL.md §1, §4): one row per deletion request × client, kept with pandas.

Rows are only ever added; a later attempt at the same request (a retry, or a quarantined node making up
a request) adds a row too, and the *latest* row per (request, node) is that pair's outcome. The file is
CSV (``.csv``) or Parquet (``.parquet``) and is rewritten atomically after every append, so a provider
crash never leaves a half-written ledger, and a restarted provider resumes from it. Columns starting
with ``client_`` are what the client reported about itself: research data, never used in a verdict.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .proof.verifier import REASONS
from .registry import atomic_write

COLUMNS = ("request_id", "node_id", "partition_id", "server_round", "nonce", "reason", "detail", "compliant",
           "attempts", "verify_ms", "proofs", "bundle_bytes", "circuit", "quarantined", "recorded_at")
CLIENT_COLUMNS = ("client_prove_s", "client_recovery", "client_personalization_acc_before",
                  "client_personalization_acc_after", "client_forget_acc_before", "client_forget_acc_after",
                  "client_masked_weights", "client_device_s", "client_upload_s")


class LedgerError(ValueError):
    """A row does not fit the ledger, or the ledger file cannot be read."""


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix not in (".csv", ".parquet"):
            raise LedgerError(f"ledger file '{self.path}' must end in .csv or .parquet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                df = pd.read_parquet(self.path) if self.path.suffix == ".parquet" else pd.read_csv(
                    self.path, keep_default_na=False, na_values=[""], dtype={"detail": str, "nonce": str, "node_id": "uint64"})
            except Exception as err:  # pandas raises many types for a damaged file
                raise LedgerError(f"ledger {self.path} is unreadable: {err}") from None
            missing = [c for c in COLUMNS if c not in df.columns]
            if missing:
                raise LedgerError(f"ledger {self.path} lacks columns {missing}")
            self._df = df
        else:
            self._df = pd.DataFrame({c: pd.Series(dtype="uint64" if c == "node_id" else object)
                                     for c in COLUMNS + CLIENT_COLUMNS})

    def frame(self) -> pd.DataFrame:
        return self._df.copy()

    def __len__(self) -> int:
        return len(self._df)

    def append(self, rows: list[dict]) -> None:
        """Validate and add rows, then rewrite the file atomically (nothing is written if a row is bad)."""
        if not rows:
            return
        for i, row in enumerate(rows):
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise LedgerError(f"ledger row {i} lacks {missing}")
            extra = [c for c in row if c not in COLUMNS + CLIENT_COLUMNS]
            if extra:
                raise LedgerError(f"ledger row {i} has unknown columns {extra}")
            if row["reason"] not in REASONS:
                raise LedgerError(f"ledger row {i}: unknown reason code '{row['reason']}'")
            if bool(row["compliant"]) != (row["reason"] == "compliant"):
                raise LedgerError(f"ledger row {i}: compliant={row['compliant']} contradicts reason '{row['reason']}'")
            for k, v in row.items():
                if k.startswith("client_") and v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                    row[k] = None
        add = pd.DataFrame(rows).astype({"node_id": "uint64"})   # Flower node ids are unsigned 64-bit
        new = pd.concat([self._df, add], ignore_index=True) if len(self._df) else add.reindex(
            columns=list(dict.fromkeys(list(self._df.columns) + list(add.columns))))
        if self.path.suffix == ".parquet":
            tmp = self.path.with_name(self.path.name + ".tmp")
            new.to_parquet(tmp, index=False)
            tmp.replace(self.path)
        else:
            atomic_write(self.path, new.to_csv(index=False).encode())
        self._df = new

    def outcomes(self) -> pd.DataFrame:
        """The latest row of every (request, node) pair."""
        if self._df.empty:
            return self._df.copy()
        return self._df.groupby(["request_id", "node_id"], as_index=False, sort=False).tail(1)

    def quarantined(self) -> set[int]:
        """Nodes with a request whose latest outcome is not compliant (they are excluded from training)."""
        out = self.outcomes()
        if out.empty:
            return set()
        return {int(n) for n in out.loc[~out["compliant"].astype(bool), "node_id"]}

    def failed_requests(self, node_id: int) -> list[str]:
        out = self.outcomes()
        if out.empty:
            return []
        sel = out[(out["node_id"].map(int) == int(node_id)) & ~out["compliant"].astype(bool)]
        return [str(r) for r in sel["request_id"]]
