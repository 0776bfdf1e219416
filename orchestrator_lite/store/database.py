"""Persistence: the only module with SQL, on SQLAlchemy Core; the schema is Alembic's
(``migrations/``).

``[database] connection`` is a URL: ``sqlite:///PATH`` (the embedded default, one file,
WAL) or ``postgresql://user:pass@host:port/db`` (psycopg 3), which several orchestrators
share. Tables:

* ``objects``: one row per desired-state object with its JSON document, in creation order
  (``seq``), which is Neutron's list order and therefore the order of ``allocations`` and
  ``floating_ips`` in the payload;
* ``debug``: the pause flags;
* ``changes``: the change log. Every write appends one row per object it touched (or a
  command for a resource) and its ``revision`` is the store's generation counter: a
  process catches up by reading the rows after the revision it has (polled on SQLite,
  woken by ``LISTEN/NOTIFY`` on PostgreSQL);
* ``resources``: per router/load balancer, its owner, its ownership epoch (fencing token)
  and its state as the owner last recorded it;
* ``placements``: per tenant or resource, the appliance image and/or compute driver to boot
  (placements.py).

Writers are serialised: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL, taken before anything is read. A write therefore validates against the latest
committed state (after catching up), claims and epoch checks cannot race, and revisions
commit in order. Callers hand in and get back plain values; validation, snapshots and
events are the rest of the store's business.
"""
import contextlib
import json
import logging
import os
import pathlib
import time

import sqlalchemy as sa
from sqlalchemy.engine import make_url

LOG = logging.getLogger(__name__)
MIGRATIONS = pathlib.Path(__file__).with_name("migrations")
WRITER_LOCK_KEY = 0x61737461  # "asta": the PostgreSQL advisory lock serialising writers
NOTIFY_CHANNEL = "astara_changes"
KEEP_CHANGES = 20000  # change-log rows kept; a process further behind reloads everything
PRUNE_EVERY = 1000  # revisions between prunes of the change log

metadata = sa.MetaData()
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
objects = sa.Table("objects", metadata,
                   sa.Column("seq", BIGINT, primary_key=True, autoincrement=True),
                   sa.Column("kind", sa.String(32), nullable=False),
                   sa.Column("id", sa.String(128), nullable=False),
                   sa.Column("body", sa.Text, nullable=False))
debug = sa.Table("debug", metadata,
                 sa.Column("scope", sa.String(16), primary_key=True),
                 sa.Column("key", sa.String(128), primary_key=True),
                 sa.Column("reason", sa.Text, nullable=False),
                 sa.Column("since", sa.Float, nullable=False))
changes = sa.Table("changes", metadata,
                   sa.Column("revision", BIGINT, primary_key=True, autoincrement=True),
                   sa.Column("kind", sa.String(32), nullable=False),
                   sa.Column("id", sa.String(128), nullable=False),
                   sa.Column("action", sa.String(32)),
                   sa.Column("at", sa.Float, nullable=False))
resources = sa.Table("resources", metadata,
                     sa.Column("kind", sa.String(32), primary_key=True),
                     sa.Column("id", sa.String(128), primary_key=True),
                     sa.Column("owner", sa.String(255), nullable=False),
                     sa.Column("epoch", sa.BigInteger, nullable=False),
                     sa.Column("claimed_at", sa.Float),
                     sa.Column("state", sa.String(32)),
                     sa.Column("last_error", sa.Text),
                     sa.Column("updated_at", sa.Float))
placements = sa.Table("placements", metadata,
                      sa.Column("scope", sa.String(16), primary_key=True),
                      sa.Column("key", sa.String(128), primary_key=True),
                      sa.Column("driver", sa.String(64), nullable=False),
                      sa.Column("image", sa.String(255), nullable=False),
                      sa.Column("since", sa.Float, nullable=False))


# Statements built once (bound parameters): building a Core statement per call cost three
# times what executing it does.
_p = sa.bindparam
INSERT_OBJECT = objects.insert().values(kind=_p("kind"), id=_p("id"), body=_p("body")) \
    .returning(objects.c.seq)
UPDATE_OBJECT = objects.update().where(objects.c.kind == _p("k"), objects.c.id == _p("i")) \
    .values(body=_p("body"))
DELETE_OBJECT = objects.delete().where(objects.c.kind == _p("k"), objects.c.id == _p("i"))
INSERT_CHANGE = changes.insert().values(kind=_p("kind"), id=_p("id"), action=_p("action"),
                                        at=_p("at")).returning(changes.c.revision)
REVISION = sa.select(sa.func.max(changes.c.revision), sa.func.min(changes.c.revision))
CHANGES_SINCE = sa.select(changes.c.revision, changes.c.kind, changes.c.id,
                          changes.c.action).where(changes.c.revision > _p("revision")) \
    .order_by(changes.c.revision)
OWNERSHIP = sa.select(resources.c.owner, resources.c.epoch).where(
    resources.c.kind == _p("k"), resources.c.id == _p("i"))
RECORD_STATE = resources.update().where(
    resources.c.kind == _p("k"), resources.c.id == _p("i"), resources.c.owner == _p("o"),
    resources.c.epoch == _p("e")).values(state=_p("state"), last_error=_p("last_error"),
                                         updated_at=_p("updated_at"))


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs (run ``db upgrade``)."""


def database_url(connection):
    """The SQLAlchemy URL for ``[database] connection``: a plain path means SQLite,
    ``postgresql://`` goes through psycopg 3."""
    if "://" not in connection:
        return make_url(f"sqlite:///{os.path.abspath(connection)}")
    url = make_url(connection)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"database connection {url.get_backend_name()!r}: only sqlite:/// "
                         "and postgresql:// are supported")
    return url


def describe(url):
    """The URL without its password, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


def _private_sqlite_file(path):
    """Create the SQLite file (and its directory) readable by its owner only, before
    SQLite creates it with the umask's mode; its -wal/-shm files take the same mode."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


class Database:
    def __init__(self, connection):
        self.url = database_url(connection)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        if self.sqlite:
            if self.url.database and self.url.database != ":memory:":
                _private_sqlite_file(self.url.database)
            self.engine = sa.create_engine(self.url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = sa.create_engine(self.url, pool_size=5, max_overflow=20,
                                           pool_pre_ping=True)

    def close(self):
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def _alembic(self, connection):
        from alembic.config import Config
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def upgrade(self):
        """Run the migrations up to the newest (``astara-orchestrator db upgrade``); under
        the writer lock, so several orchestrators starting at once do it once."""
        from alembic import command
        with self.writing() as conn:
            command.upgrade(self._alembic(conn), "head")

    def revisions(self):
        """``(current, head)`` schema revisions."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            head = ScriptDirectory.from_config(self._alembic(conn)).get_current_head()
        return current, head

    def check_schema(self):
        current, head = self.revisions()
        if current != head:
            raise SchemaError(f"database {describe(self.url)} is at schema revision "
                              f"{current or '(none)'}, this orchestrator needs {head}: run "
                              "`astara-orchestrator db upgrade`")

    # -- transactions ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self):
        """A write transaction holding the store-wide writer lock."""
        with self.engine.begin() as conn:
            if not self.sqlite:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": WRITER_LOCK_KEY})
            yield conn

    @contextlib.contextmanager
    def reading(self):
        """A consistent read-only view (one snapshot across several queries)."""
        if self.sqlite:
            with self.engine.connect().execution_options(astara_read=True) as conn:
                with conn.begin():
                    yield conn
            return
        with self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ") as conn:
            with conn.begin():
                yield conn

    # -- desired state --------------------------------------------------------------------------
    @staticmethod
    def load_objects(conn):
        """``[(kind, object, seq)]`` in creation order."""
        rows = conn.execute(sa.select(objects.c.kind, objects.c.body, objects.c.seq)
                            .order_by(objects.c.seq))
        return [(kind, json.loads(body), seq) for kind, body, seq in rows]

    @staticmethod
    def objects_by_key(conn, keys):
        """``{(kind, id): (object, seq)}`` for the keys that exist."""
        by_kind = {}
        for kind, obj_id in keys:
            by_kind.setdefault(kind, []).append(obj_id)
        found = {}
        for kind, ids in by_kind.items():
            for start in range(0, len(ids), 500):
                rows = conn.execute(sa.select(objects.c.id, objects.c.body, objects.c.seq)
                                    .where(objects.c.kind == kind,
                                           objects.c.id.in_(ids[start:start + 500])))
                for obj_id, body, seq in rows:
                    found[(kind, obj_id)] = (json.loads(body), seq)
        return found

    @staticmethod
    def write_objects(conn, object_changes):
        """Apply ``(kind, old, new)`` changes: ``old`` None inserts, ``new`` None deletes,
        both given updates. Returns ``{(kind, id): seq}`` of the inserted rows."""
        seqs = {}
        for kind, old, new in object_changes:
            if new is None:
                conn.execute(DELETE_OBJECT, {"k": kind, "i": old["id"]})
            elif old is None:
                seqs[(kind, new["id"])] = conn.execute(INSERT_OBJECT, {
                    "kind": kind, "id": new["id"],
                    "body": json.dumps(new, sort_keys=True)}).scalar_one()
            else:
                conn.execute(UPDATE_OBJECT, {"k": kind, "i": new["id"],
                                             "body": json.dumps(new, sort_keys=True)})
        return seqs

    # -- the change log -------------------------------------------------------------------------
    def log_changes(self, conn, entries):
        """Append ``(kind, id, action)`` rows; the new revision (None if no entries).
        PostgreSQL listeners are notified when the transaction commits."""
        first = revision = None
        now = time.time()
        for kind, obj_id, action in entries:
            revision = conn.execute(INSERT_CHANGE, {"kind": kind, "id": obj_id,
                                                    "action": action, "at": now}).scalar_one()
            first = revision if first is None else first
        if revision is not None:
            if not self.sqlite:
                conn.execute(sa.text("SELECT pg_notify(:channel, :revision)"),
                             {"channel": NOTIFY_CHANNEL, "revision": str(revision)})
            # When this transaction's revisions hold a multiple of PRUNE_EVERY (not only
            # its last one: a multi-row write may step over it).
            if (first - 1) // PRUNE_EVERY != revision // PRUNE_EVERY:
                conn.execute(changes.delete().where(changes.c.revision <
                                                    revision - KEEP_CHANGES))
        return revision

    @staticmethod
    def revision(conn):
        """``(newest, oldest)`` revision in the change log (0, 0 when empty)."""
        newest, oldest = conn.execute(REVISION).one()
        return newest or 0, oldest or 0

    @staticmethod
    def changes_since(conn, revision):
        """``[(revision, kind, id, action)]`` after ``revision``, oldest first."""
        return [tuple(row) for row in conn.execute(CHANGES_SINCE, {"revision": revision})]

    # -- debug flags ----------------------------------------------------------------------------
    @staticmethod
    def load_debug_flags(conn):
        """``{(scope, key): {"reason", "since"}}``."""
        rows = conn.execute(sa.select(debug.c.scope, debug.c.key, debug.c.reason,
                                      debug.c.since))
        return {(scope, key): {"reason": reason, "since": since}
                for scope, key, reason, since in rows}

    @staticmethod
    def set_debug_flag(conn, scope, key, reason, since):
        conn.execute(debug.delete().where(debug.c.scope == scope, debug.c.key == key))
        conn.execute(debug.insert().values(scope=scope, key=key, reason=reason, since=since))

    @staticmethod
    def clear_debug_flag(conn, scope, key):
        conn.execute(debug.delete().where(debug.c.scope == scope, debug.c.key == key))

    # -- placements ---------------------------------------------------------------------------
    @staticmethod
    def load_placements(conn):
        """``{(scope, key): {"driver", "image", "since"}}``."""
        rows = conn.execute(sa.select(placements.c.scope, placements.c.key,
                                      placements.c.driver, placements.c.image,
                                      placements.c.since))
        return {(scope, key): {"driver": driver, "image": image, "since": since}
                for scope, key, driver, image, since in rows}

    @staticmethod
    def set_placement(conn, scope, key, driver, image, since):
        conn.execute(placements.delete().where(placements.c.scope == scope,
                                               placements.c.key == key))
        conn.execute(placements.insert().values(scope=scope, key=key, driver=driver,
                                                image=image, since=since))

    @staticmethod
    def clear_placement(conn, scope, key):
        conn.execute(placements.delete().where(placements.c.scope == scope,
                                               placements.c.key == key))

    # -- ownership (fencing) --------------------------------------------------------------------
    @staticmethod
    def ownership(conn, kind, obj_id):
        """``(owner, epoch)`` of a resource, ``("", 0)`` if never claimed."""
        row = conn.execute(OWNERSHIP, {"k": kind, "i": obj_id}).first()
        return (row[0], row[1]) if row else ("", 0)

    def claim(self, conn, kind, obj_id, owner, at_least=0):
        """Make ``owner`` the owner with a new, higher epoch (above ``at_least`` too)."""
        _, epoch = self.ownership(conn, kind, obj_id)
        new = max(epoch, at_least) + 1
        now = time.time()
        if epoch:
            conn.execute(resources.update().where(resources.c.kind == kind,
                                                  resources.c.id == obj_id)
                         .values(owner=owner, epoch=new, claimed_at=now))
        else:
            conn.execute(resources.insert().values(kind=kind, id=obj_id, owner=owner,
                                                   epoch=new, claimed_at=now))
        return new

    @staticmethod
    def release(conn, kind, obj_id, owner, epoch):
        """Clear the owner if it still is ``owner`` at ``epoch`` (the epoch stays)."""
        conn.execute(resources.update().where(resources.c.kind == kind,
                                              resources.c.id == obj_id,
                                              resources.c.owner == owner,
                                              resources.c.epoch == epoch)
                     .values(owner=""))

    @staticmethod
    def record_state(conn, kind, obj_id, owner, epoch, state, last_error):
        """Record the owner's view of the resource; False when it is no longer the owner at
        that epoch (fenced: nothing is written)."""
        result = conn.execute(RECORD_STATE, {"k": kind, "i": obj_id, "o": owner, "e": epoch,
                                             "state": state, "last_error": last_error,
                                             "updated_at": time.time()})
        return result.rowcount == 1

    @staticmethod
    def forget_resource(conn, kind, obj_id, owner, epoch):
        """Delete a deleted resource's row if ``owner`` still holds it at ``epoch``."""
        conn.execute(resources.delete().where(resources.c.kind == kind,
                                              resources.c.id == obj_id,
                                              resources.c.owner == owner,
                                              resources.c.epoch == epoch))

    @staticmethod
    def resource_row(conn, kind, obj_id):
        """One resource's row (as in ``resource_rows``), or None."""
        row = conn.execute(sa.select(resources).where(resources.c.kind == kind,
                                                      resources.c.id == obj_id)).first()
        return dict(row._mapping) if row is not None else None

    @staticmethod
    def resource_rows(conn):
        """``{(kind, id): {"owner", "epoch", "state", "last_error", ...}}``."""
        rows = conn.execute(sa.select(resources))
        return {(row.kind, row.id): dict(row._mapping) for row in rows}


def _sqlite_connect(dbapi_connection, _record):
    # SQLAlchemy's own BEGIN handling is off: the "begin" hook issues BEGIN IMMEDIATE, so
    # a write transaction holds the write lock from its first statement (no upgrade
    # deadlocks between two writers that both read first).
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _sqlite_begin(conn):
    read_only = conn.get_execution_options().get("astara_read")
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
