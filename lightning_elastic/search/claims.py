"""Atomic config claims for workers sharing one study.

Why a table of our own: Optuna's RDB storage has no atomic "take this config" operation. Popping an enqueued
(WAITING) trial is a read followed by a write, and SQLite has no ``SELECT ... FOR UPDATE``, so two workers could
both pop one waiting trial, or each enqueue the same config and run it under two trial numbers. A row in
``lightning_elastic_claims`` with a UNIQUE ``(study_id, key_hash)`` is atomic in every database SQLAlchemy speaks
(SQLite, PostgreSQL, MySQL): the INSERT either succeeds, and the config is this worker's, or raises
``IntegrityError``, and it is someone else's. The claim's autoincrement id also orders claims, which is how the
budget is enforced without a race: the claim ranked ``budget`` or later yields.

Reading which configs are taken is one indexed query on this table, not a read of the whole study. Keys are of
canonical configs when the study knows them (see :mod:`lightning_elastic.search.study`); ``rekey`` moves the claims
of a study written before that.
In-memory studies (one process) keep the same records in a dict on the storage object.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import optuna

TABLE = "lightning_elastic_claims"
_LOCK = threading.Lock()


def _hash(key: str) -> str:
    # config keys of large spaces are long JSON; a fixed-size hash keeps the unique index within MySQL's limits
    return hashlib.sha256(key.encode()).hexdigest()


class _MemoryClaims:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, tuple[int, int]]] = {}  # study_id -> {key: (claim_id, trial_id)}
        self.next_id = 1

    def insert(self, study_id: int, key: str, trial_id: int) -> int | None:
        with _LOCK:
            rows = self.rows.setdefault(study_id, {})
            if key in rows:
                return None
            claim_id, self.next_id = self.next_id, self.next_id + 1
            rows[key] = (claim_id, trial_id)
            return claim_id

    def keys(self, study_id: int) -> set[str]:
        return set(self.rows.get(study_id, {}))

    def owner(self, study_id: int, key: str) -> int | None:
        row = self.rows.get(study_id, {}).get(key)
        return None if row is None else row[1]

    def rank(self, study_id: int, claim_id: int) -> int:
        return sum(cid < claim_id for cid, _ in self.rows.get(study_id, {}).values())

    def rekey(self, study_id: int, key: str, new_key: str) -> bool:
        with _LOCK:
            rows = self.rows.get(study_id, {})
            if key not in rows:
                return False
            row = rows.pop(key)
            if new_key in rows:
                return False  # the network is claimed already: this claim is dropped
            rows[new_key] = row
            return True

    def release(self, study_id: int, trial_id: int) -> None:
        with _LOCK:
            rows = self.rows.get(study_id, {})
            for key in [k for k, (_, tid) in rows.items() if tid == trial_id]:
                del rows[key]


class _RDBClaims:
    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.engine = engine
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("claim_id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("study_id", sa.Integer, nullable=False, index=True),
            sa.Column("key_hash", sa.String(64), nullable=False),
            sa.Column("config_key", sa.Text, nullable=False),
            sa.Column("trial_id", sa.Integer, nullable=False),
            sa.UniqueConstraint("study_id", "key_hash", name="uq_lightning_elastic_claim"),
        )
        try:
            meta.create_all(engine, checkfirst=True)
        except sa.exc.DatabaseError:
            # workers starting together: another one created the table between the check and the CREATE
            if not sa.inspect(engine).has_table(TABLE):
                raise

    def insert(self, study_id: int, key: str, trial_id: int) -> int | None:
        sa, t = self.sa, self.table
        try:
            with self.engine.begin() as conn:
                res = conn.execute(t.insert().values(study_id=study_id, key_hash=_hash(key), config_key=key,
                                                     trial_id=trial_id))
                return int(res.inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return None

    def keys(self, study_id: int) -> set[str]:
        t = self.table
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(self.sa.select(t.c.config_key).where(t.c.study_id == study_id))}

    def owner(self, study_id: int, key: str) -> int | None:
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(self.sa.select(t.c.trial_id).where(t.c.study_id == study_id,
                                                                  t.c.key_hash == _hash(key))).first()
        return None if row is None else int(row[0])

    def rank(self, study_id: int, claim_id: int) -> int:
        t, sa = self.table, self.sa
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.study_id == study_id, t.c.claim_id < claim_id)).scalar_one())

    def rekey(self, study_id: int, key: str, new_key: str) -> bool:
        """Move a claim to ``new_key``; if that is claimed already, drop this claim. True when moved."""
        sa, t = self.sa, self.table
        where = (t.c.study_id == study_id, t.c.key_hash == _hash(key))
        try:
            with self.engine.begin() as conn:
                return conn.execute(t.update().where(*where).values(key_hash=_hash(new_key),
                                                                    config_key=new_key)).rowcount > 0
        except sa.exc.IntegrityError:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(*where))
            return False

    def release(self, study_id: int, trial_id: int) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.study_id == study_id, t.c.trial_id == trial_id))


def claims_of(study: optuna.Study) -> _MemoryClaims | _RDBClaims:
    """The claim records of ``study``'s storage (created on first use, cached on the storage object)."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB storages in a caching layer
    with _LOCK:
        found = backend.__dict__.get("_lightning_elastic_claims")
        if found is None:
            engine = getattr(backend, "engine", None)
            found = _MemoryClaims() if engine is None else _RDBClaims(engine)
            backend.__dict__["_lightning_elastic_claims"] = found
    return found
