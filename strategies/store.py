"""The provider's durable state: one SQLite file holding the registry and the ledger (docs/protocol.md §1).

Beside them it keeps the provider's event clock (``meta.epoch``), every commit failure and every
request's first broadcast (its epoch and mask): a request is judged only against registry entries
older than its broadcast, and a restarted provider sends the same mask again.

Why one SQLite file. A verdict changes two things at once: the ledger gains a row and, when the
client complied, its registry entry moves to θu. Written to two files, a provider killed between the
two writes would come back with a registry at θu and no ledger row (the node is asked again, proves
from θp and is wrongly told ``stale-model``), or the reverse. Here both go in one transaction
(:meth:`ProviderStore.transaction`): a provider killed at any instant restarts with both or neither.
The database runs in WAL mode with ``synchronous=FULL``, so a committed verdict survives a power cut.

Opening never repairs or recreates anything silently. A file that is not a SQLite database, fails
SQLite's integrity check, is empty, or has another schema raises :class:`StoreError` naming the file
and what is wrong, and the file is left untouched for the operator to restore from a backup.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 3  # v2: registration epochs, commit failures, broadcasts; v3: node identities
APPLICATION_ID = 0x5A4B4150  # "ZKAP": marks the file as a zkapex-flwr provider store

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE registry (
    node_id TEXT NOT NULL, version INTEGER NOT NULL, circuit TEXT NOT NULL, circuit_id TEXT NOT NULL,
    layout TEXT NOT NULL, partition_id INTEGER, round INTEGER, digest TEXT NOT NULL, entry BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('commit', 'unlearn', 'repersonalize')), epoch INTEGER NOT NULL,
    theta_digest TEXT NOT NULL, columns_digest TEXT NOT NULL, identity TEXT,
    PRIMARY KEY (node_id, version));
CREATE INDEX registry_theta ON registry (theta_digest);
CREATE INDEX registry_columns ON registry (columns_digest);
CREATE INDEX registry_identity ON registry (identity);
CREATE TABLE commit_failures (
    node_id TEXT PRIMARY KEY, reason TEXT NOT NULL, detail TEXT, epoch INTEGER NOT NULL, identity TEXT);
CREATE TABLE broadcasts (
    request_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, layout TEXT NOT NULL, mask BLOB NOT NULL,
    recorded_at TEXT);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL, node_id TEXT NOT NULL, partition_id INTEGER, server_round INTEGER, nonce TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT, compliant INTEGER NOT NULL, attempts INTEGER, verify_ms REAL, proofs INTEGER,
    bundle_bytes INTEGER, circuit TEXT, quarantined INTEGER NOT NULL, recorded_at TEXT,
    client_prove_s REAL, client_recovery REAL, client_personalization_acc_before REAL,
    client_personalization_acc_after REAL, client_forget_acc_before REAL, client_forget_acc_after REAL,
    client_masked_weights REAL, client_device_s REAL, client_upload_s REAL, epoch INTEGER,
    UNIQUE (request_id, node_id, nonce));
CREATE INDEX ledger_pair ON ledger (request_id, node_id, seq);
"""
TABLES = ("meta", "registry", "ledger", "commit_failures", "broadcasts")


class StoreError(RuntimeError):
    """The provider store is damaged, of another schema, or a write would break its invariants."""


class ProviderStore:
    """One SQLite database: ``registry`` (versioned commitments) and ``ledger`` (verdict rows)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"provider store '{self.path}' is a directory; give the path of the database file")
        fresh = not self.path.exists()
        if not fresh and self.path.stat().st_size == 0:
            raise StoreError(
                f"provider store {self.path} is empty (0 bytes): it was truncated or never written. "
                "It was left as it is; restore it from a backup or remove it to start a new provider"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._depth = 0
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self.conn.execute("PRAGMA foreign_keys = ON")
            if fresh:
                self._create()
            else:
                self._check()
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None

    def _damaged(self, err: Exception) -> StoreError:
        return StoreError(
            f"provider store {self.path} is damaged ({err}). It was left as it is; restore it from a "
            "backup or move it away to start a new provider (registered clients must then commit again)"
        )

    def _create(self) -> None:
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):  # executescript would commit early
                self.conn.execute(statement)
            self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT INTO meta VALUES ('epoch', '0')")

    def _check(self) -> None:
        (app_id,) = self.conn.execute("PRAGMA application_id").fetchone()
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{self.path} is a SQLite database but not a zkapex-flwr provider store "
                f"(application id {app_id:#x}); it was left as it is"
            )
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise self._damaged(RuntimeError("integrity check: " + "; ".join(problems[:3])))
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise self._damaged(RuntimeError(f"tables {missing} are missing"))
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == "2":  # v2 -> v3: identity columns, empty for entries made before
            with self.transaction() as db:
                db.execute("ALTER TABLE registry ADD COLUMN identity TEXT")
                db.execute("ALTER TABLE commit_failures ADD COLUMN identity TEXT")
                db.execute("CREATE INDEX registry_identity ON registry (identity)")
                db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
            row = ("3",)
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StoreError(
                f"provider store {self.path} has schema version {row[0] if row else None}, this "
                f"zkapex-flwr reads version {SCHEMA_VERSION}"
            )

    @contextmanager
    def transaction(self):
        """All writes inside happen atomically (nested calls join the outer transaction)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as err:
                raise self._damaged(err) from None
        finally:
            self._depth = 0

    def next_epoch(self) -> int:
        """The provider's event clock: one tick per registration, commit failure, broadcast and verdict.

        Called inside a transaction, so the tick and the record it dates commit together.
        """
        if not self._depth:
            raise StoreError("next_epoch() must be called inside a transaction")
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'epoch'")
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None

    def close(self) -> None:
        self.conn.close()


def open_store(where: ProviderStore | str | Path) -> ProviderStore:
    return where if isinstance(where, ProviderStore) else ProviderStore(where)
