"""The provider's ledger (docs/protocol.md §1, §4): one row per deletion request × client attempt.

Rows are only ever added, to the ``ledger`` table of the provider's SQLite
:class:`~strategies.store.ProviderStore`; a later attempt at the same request (a quarantined node
making up a request) adds a row too, and the *latest* row per (request, node) is that pair's outcome.
A verdict is recorded at most once per (request, node, round nonce): the table refuses a second row,
so a restarted provider can never count a client twice. The provider writes a verdict's row and the
registry's move to θu in one transaction. :meth:`Ledger.frame` gives the rows to pandas;
:meth:`Ledger.export` writes CSV or Parquet for reports. Columns starting with ``client_`` are what the
client reported about itself: research data, never used in a verdict.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from zkapex_flwr.files import atomic_write
from zkapex_flwr.protocol import CLIENT_METRICS, REASONS, metric_column

from .store import ProviderStore, StoreError, open_store

COLUMNS = (
    "request_id",
    "node_id",
    "partition_id",
    "server_round",
    "nonce",
    "reason",
    "detail",
    "compliant",
    "attempts",
    "verify_ms",
    "proofs",
    "bundle_bytes",
    "circuit",
    "quarantined",
    "recorded_at",
)
CLIENT_COLUMNS = tuple(metric_column(k) for k in CLIENT_METRICS)
ALL = COLUMNS + CLIENT_COLUMNS
# the latest row of every (request, node) pair
_LATEST = (
    "SELECT * FROM ledger l WHERE seq = (SELECT MAX(seq) FROM ledger WHERE request_id = l.request_id "
    "AND node_id = l.node_id)"
)


@dataclass
class LedgerRow:
    """One verdict: a (request, node) attempt, its reason code and what the client said about itself."""

    request_id: str
    node_id: int
    reason: str
    detail: str = ""
    partition_id: int = -1
    server_round: int = -1
    nonce: str = ""
    attempts: int = 0
    verify_ms: float | None = None
    proofs: int = 0
    bundle_bytes: int = 0
    circuit: str = ""
    quarantined: bool = False
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    client: dict[str, float] = field(default_factory=dict)  # CLIENT_METRICS key -> value (reported, unverified)

    @property
    def compliant(self) -> bool:
        return self.reason == "compliant"

    def as_dict(self) -> dict:
        """The row as the ledger's columns (client metrics as ``client_*``)."""
        unknown = sorted(set(self.client) - set(CLIENT_METRICS))
        if unknown:
            raise LedgerError(f"ledger row: unknown client metric(s) {unknown}; known: {list(CLIENT_METRICS)}")
        row = {c: getattr(self, c) for c in COLUMNS if c != "compliant"} | {"compliant": self.compliant}
        return row | {metric_column(k): v for k, v in self.client.items()}


class LedgerError(StoreError, ValueError):
    """A row does not fit the ledger (nothing is written then)."""


class Ledger:
    def __init__(self, store: ProviderStore | str | Path):
        self.store = open_store(store)

    def __len__(self) -> int:
        return self.store.query("SELECT COUNT(*) FROM ledger")[0][0]

    def _frame(self, sql: str, params: tuple = ()) -> pd.DataFrame:
        try:
            df = pd.read_sql_query(sql, self.store.conn, params=params)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:
            raise self.store._damaged(err) from None
        df = df.drop(columns=["seq"], errors="ignore").reindex(columns=list(ALL))
        floats = {c: "float64" for c in ("verify_ms",) + CLIENT_COLUMNS}  # missing values read as NaN, never None
        return df.astype({"node_id": "uint64", "compliant": bool, "quarantined": bool, **floats})

    def frame(self) -> pd.DataFrame:
        """Every row, in the order recorded."""
        return self._frame("SELECT * FROM ledger ORDER BY seq")

    def export(self, path: str | Path) -> Path:
        """Write every row to ``path`` (``.csv`` or ``.parquet``), atomically."""
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            raise LedgerError(f"ledger export '{path}' must end in .csv or .parquet")
        df = self.frame()
        if path.suffix == ".parquet":
            tmp = path.with_name(path.name + ".tmp")
            df.to_parquet(tmp, index=False)
            tmp.replace(path)
        else:
            atomic_write(path, df.to_csv(index=False).encode())
        return path

    def append(self, rows: list[LedgerRow | dict]) -> None:
        """Validate and add rows in one transaction (nothing is written if a row is bad or already recorded)."""
        if not rows:
            return
        clean = []
        for i, row in enumerate(rows):
            if isinstance(row, LedgerRow):
                row = row.as_dict()
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise LedgerError(f"ledger row {i} lacks {missing}")
            extra = [c for c in row if c not in ALL]
            if extra:
                raise LedgerError(f"ledger row {i} has unknown columns {extra}")
            if row["reason"] not in REASONS:
                raise LedgerError(f"ledger row {i}: unknown reason code '{row['reason']}'")
            if bool(row["compliant"]) != (row["reason"] == "compliant"):
                raise LedgerError(f"ledger row {i}: compliant={row['compliant']} contradicts reason '{row['reason']}'")
            values = {c: row.get(c) for c in ALL}
            for k, v in values.items():
                if k.startswith("client_") and v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                    values[k] = None
            values["node_id"] = str(int(row["node_id"]))
            values["compliant"], values["quarantined"] = int(bool(row["compliant"])), int(bool(row["quarantined"]))
            clean.append(values)
        cols = ", ".join(ALL + ("epoch",))
        with self.store.transaction() as db:
            for i, values in enumerate(clean):
                try:
                    db.execute(
                        f"INSERT INTO ledger ({cols}) VALUES ({', '.join('?' * (len(ALL) + 1))})",
                        tuple(values[c] for c in ALL) + (self.store.next_epoch(),),
                    )
                except sqlite3.IntegrityError:
                    raise LedgerError(
                        f"ledger row {i}: request {values['request_id']!r}, node {values['node_id']}, "
                        f"nonce {values['nonce']!r} already has a verdict (a client is never counted "
                        "twice)"
                    ) from None

    def outcomes(self) -> pd.DataFrame:
        """The latest row of every (request, node) pair."""
        return self._frame(_LATEST + " ORDER BY seq")

    def decided(self, request_id: str) -> set[int]:
        """Nodes with a recorded outcome for ``request_id``."""
        return {
            int(r[0])
            for r in self.store.query("SELECT DISTINCT node_id FROM ledger WHERE request_id = ?", (request_id,))
        }

    def decided_at(self, request_id: str) -> dict[int, int]:
        """Node → epoch of its latest row for ``request_id``."""
        return {
            int(n): int(e or 0)
            for n, e in self.store.query(
                "SELECT node_id, MAX(epoch) FROM ledger WHERE request_id = ? GROUP BY node_id", (request_id,)
            )
        }

    # ------------------------------------------------------------------------------ broadcasts
    def record_broadcast(self, request_id: str, layout_digest: str, mask: bytes) -> tuple[int, bytes]:
        """The request's first broadcast: (epoch, mask). Recorded once; later calls return the first."""
        from datetime import datetime

        with self.store.transaction() as db:
            known = db.execute(
                "SELECT epoch, layout, mask FROM broadcasts WHERE request_id = ?", (request_id,)
            ).fetchone()
            if known:
                if known[1] != layout_digest:
                    raise LedgerError(
                        f"request {request_id!r} was broadcast for another block layout "
                        f"({known[1][:12]}…, this provider has {layout_digest[:12]}…)"
                    )
                return int(known[0]), bytes(known[2])
            epoch = self.store.next_epoch()
            db.execute(
                "INSERT INTO broadcasts (request_id, epoch, layout, mask, recorded_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, epoch, layout_digest, mask, datetime.now(UTC).isoformat(timespec="milliseconds")),
            )
        return epoch, mask

    def broadcast(self, request_id: str) -> tuple[int, bytes] | None:
        """(epoch, mask) of the request's first broadcast, or None if it was never broadcast."""
        rows = self.store.query("SELECT epoch, mask FROM broadcasts WHERE request_id = ?", (request_id,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def quarantined(self) -> set[int]:
        """Nodes with a request whose latest outcome is not compliant (they are excluded from training)."""
        return {int(r[0]) for r in self.store.query(f"SELECT DISTINCT node_id FROM ({_LATEST}) WHERE compliant = 0")}

    def failed_requests(self, node_id: int) -> list[str]:
        return [
            r[0]
            for r in self.store.query(
                f"SELECT request_id FROM ({_LATEST}) WHERE compliant = 0 AND node_id = ? ORDER BY seq",
                (str(int(node_id)),),
            )
        ]
