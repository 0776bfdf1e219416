"""Persistence: the only module with SQL. SQLite (stdlib, WAL), one file.

``objects`` holds one row per object with its JSON document, in creation order (``seq``),
which is Neutron's list order and therefore the order of ``allocations`` and
``floating_ips`` in the payload. ``debug`` holds the pause flags, ``placements`` the per-tenant/per-resource
image and driver (placements.py). Callers hand in and get
back plain dicts; validation, snapshots and events are the rest of the store's business.
Every method is atomic and safe to call from any thread.
"""
import json
import sqlite3
import threading

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (kind, id)
);
CREATE TABLE IF NOT EXISTS debug (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS placements (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    driver TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
"""


class Database:
    def __init__(self, path):
        # One connection shared by all threads; the lock keeps one thread's transaction
        # from taking in another thread's statements.
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def close(self):
        with self._lock:
            self._conn.close()

    def load_objects(self):
        """``[(kind, object)]`` in creation order."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, body FROM objects ORDER BY seq").fetchall()
        return [(kind, json.loads(body)) for kind, body in rows]

    def write(self, changes):
        """Apply ``(kind, old, new)`` changes in one transaction: ``old`` None inserts,
        ``new`` None deletes, both given updates. All or nothing."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for kind, old, new in changes:
                    if new is None:
                        conn.execute("DELETE FROM objects WHERE kind=? AND id=?",
                                     (kind, old["id"]))
                    elif old is None:
                        conn.execute("INSERT INTO objects (kind, id, body) VALUES (?, ?, ?)",
                                     (kind, new["id"], json.dumps(new, sort_keys=True)))
                    else:
                        conn.execute("UPDATE objects SET body=? WHERE kind=? AND id=?",
                                     (json.dumps(new, sort_keys=True), kind, new["id"]))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def load_debug_flags(self):
        """``{(scope, key): {"reason", "since"}}``."""
        with self._lock:
            rows = self._conn.execute("SELECT scope, key, reason, since FROM debug").fetchall()
        return {(scope, key): {"reason": reason, "since": since}
                for scope, key, reason, since in rows}

    def set_debug_flag(self, scope, key, reason, since):
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO debug (scope, key, reason, since) "
                               "VALUES (?, ?, ?, ?)", (scope, key, reason, since))

    def clear_debug_flag(self, scope, key):
        with self._lock:
            self._conn.execute("DELETE FROM debug WHERE scope=? AND key=?", (scope, key))

    def load_placements(self):
        """``{(scope, key): {"driver", "image", "since"}}``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT scope, key, driver, image, since FROM placements").fetchall()
        return {(scope, key): {"driver": driver, "image": image, "since": since}
                for scope, key, driver, image, since in rows}

    def set_placement(self, scope, key, driver, image, since):
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO placements (scope, key, driver, image, "
                               "since) VALUES (?, ?, ?, ?, ?)",
                               (scope, key, driver, image, since))

    def clear_placement(self, scope, key):
        with self._lock:
            self._conn.execute("DELETE FROM placements WHERE scope=? AND key=?", (scope, key))
