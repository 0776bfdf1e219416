"""Crash-safe persistence of the last good configuration: each commit is ONE write, made
durable by one ``fdatasync``, of a checksummed record into a file that already exists.

The committed generations live in ``committed/0.json`` … ``committed/6.json`` (``SLOTS``
files, created once, durably). A commit overwrites, in place, the slot of the oldest
generation nobody needs (never the committed one, nor the one a revert would go to) with a
record of the new generation (spaces after it when it is shorter than the one there: the
file keeps its size, ``_write_slot``) and ``fdatasync``s it: no temporary file, no rename,
no directory to sync, no file created or deleted per push.
A record is a JSON document whose first key, ``check``, holds the CRC-32 and the length of
the record's bytes after it (the other header fields, then the payload as the bytes that
were pushed; spaces may follow). A slot whose check fails — a write torn by a crash or a
power loss, a commit whose write or sync failed (the slot is then truncated) — is no
generation at all: the newest valid record is the committed generation, so a restart
always comes back on the last commit that was acknowledged (its sync returned) or, for a
commit that never was, the one before it; never a mix. Only the slot being written is at
risk, and it held the oldest kept generation.

``pending.json`` is written before an apply starts and removed when it ends, so after a
crash the boot re-apply knows which interfaces the interrupted apply may have touched.

Commit-confirm (README, "Commit-confirm"): each record names its ``previous`` generation
(the one before it; while a generation awaits confirmation, the last confirmed one) and
says whether it is ``awaiting`` confirmation; ``committed/confirmed`` holds the number of
the last awaiting generation that was confirmed (written in place, not synced: losing it
only makes the agent revert to the last confirmed generation, the safe side). An agent
that starts while the committed generation awaits confirmation comes back on its previous
one, committed again under the next number.

Manual rollback (``astara-router-ctl rollback``): the committed generation and the
``KEEP_GENERATIONS`` before it (and the previous one) stay in their slots.

A state directory of an older agent (``config.json``, ``previous.json``, ``confirm.json``,
``generations/<n>.json``) is moved into the slots by the first ``load``.
"""
import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import Optional

import msgspec

LOG = logging.getLogger(__name__)
KEEP_GENERATIONS = 5  # generations kept before the committed one (manual rollback)
SLOTS = KEEP_GENERATIONS + 2  # and the one a revert goes to, when it is older
CHECK = b'{"check": "%08x %010d", '  # CRC-32 and length of the bytes after it
CHECK_LENGTH = len(CHECK % (0, 0))
PAYLOAD_KEY = b', "payload": '  # the record's header keys come first, then this
HEADER_BYTES = 512  # more than a record's header takes (check, number, hash, time...)


def atomic_write(path, data, mode=0o600, durable=True):
    """Write ``data`` (text or bytes) to ``path`` so that readers see the old or the new
    file, never a mix: temp file in the same directory, rename. ``durable``: also across a
    power loss (fsync of the file before the rename and of the directory after)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(directory)


def fsync_directory(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def canonical_json(body):
    """The payload's JSON value with sorted keys and no spacing: what its hash is taken of.
    msgspec writes it ten times faster than the json module and byte for byte the same for
    ASCII without escapes — always the case for the orchestrator's payloads; anything else
    takes the json module's path, so the hash never depends on which one ran."""
    encoded = SORTED_JSON.encode(body)
    if _plain(encoded):
        return encoded
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


SORTED_JSON = msgspec.json.Encoder(order="sorted")


def _plain(encoded):
    """``encoded`` is JSON that msgspec and the json module write alike (canonical_json)."""
    return encoded.isascii() and b"\\" not in encoded


def payload_hash(body):
    """Stable digest of a payload's JSON value (key order and spacing do not matter); the
    orchestrator computes the same to detect drift."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


class PayloadDigest:
    """``payload_hash(body)`` taken while a caller that needs the network entries encoded
    anyway encodes them (``SORTED_JSON``) one by one and hands each to ``network``, in
    order (the parser digests them for its memo keys): the rest of the body is encoded
    around them, the same bytes as ``canonical_json`` without encoding the networks —
    three quarters of a body — a second time (0.3 ms a push at 1 000 floating IPs)."""

    def __init__(self, body):
        self.body = body
        before = SORTED_JSON.encode({k: v for k, v in body.items() if k < "networks"})
        self.plain = _plain(before)
        self.sha = hashlib.sha256(before[:-1])  # "{" and the keys sorted before networks
        self.sha.update(b'"networks":[' if before == b"{}" else b',"networks":[')
        self.separator = b""

    def network(self, encoded):
        self.plain = self.plain and _plain(encoded)
        self.sha.update(self.separator)
        self.sha.update(encoded)
        self.separator = b","

    def hexdigest(self):
        after = SORTED_JSON.encode({k: v for k, v in self.body.items() if k > "networks"})
        if not (self.plain and _plain(after)):  # the json module's bytes, not msgspec's
            return payload_hash(self.body)
        self.sha.update(b"]}" if after == b"{}" else b"]," + after[1:])
        return self.sha.hexdigest()


@dataclass(frozen=True)
class Generation:
    number: int
    payload: dict
    hash: str
    committed_at: float


@dataclass(frozen=True)
class GenerationHeader:
    """A stored generation without its payload."""
    number: int
    hash: str
    committed_at: float


@dataclass(frozen=True)
class Record:
    """The header of one slot's record: the generation it holds, the one a revert goes to
    (``previous``) and whether it awaits confirmation."""
    slot: int
    number: int
    hash: str
    committed_at: float
    previous: Optional[int]
    awaiting: bool


def encode_record(number, digest, committed_at, previous, awaiting, raw):
    """The record's bytes as a list of buffers (the payload ``raw`` is not copied)."""
    header = json.dumps({"awaiting": awaiting, "committed_at": committed_at,
                         "generation": number, "hash": digest, "previous": previous},
                        sort_keys=True).encode()[1:-1] + PAYLOAD_KEY
    crc = zlib.crc32(b"}", zlib.crc32(raw, zlib.crc32(header)))
    return [CHECK % (crc, len(header) + len(raw) + 1), header, raw, b"}"]


def parse_header(head, slot=0):
    """The ``Record`` a slot's first bytes announce (not checked), or None."""
    if len(head) < CHECK_LENGTH or not head.startswith(CHECK[:11]):
        return None
    header, found, _ = head[CHECK_LENGTH:HEADER_BYTES].partition(PAYLOAD_KEY)
    try:
        fields = json.loads(b"{" + header + b"}") if found else None
        return Record(slot, int(fields["generation"]), fields["hash"],
                      float(fields["committed_at"]), fields["previous"],
                      bool(fields["awaiting"]))
    except (ValueError, KeyError, TypeError):
        return None


def checked(data):
    """Whether a slot's bytes hold a whole record: its check (CRC-32 and length of the
    bytes after it) matches, byte for byte."""
    try:
        length = int(data[20:30])
    except ValueError:
        return False
    rest = memoryview(data)[CHECK_LENGTH:CHECK_LENGTH + length]
    return len(rest) == length and data[:CHECK_LENGTH] == CHECK % (zlib.crc32(rest), length)


def decode_record(data, slot=0):
    """``(Record, payload bytes)`` of a slot's bytes, or None when its check fails."""
    record = parse_header(data[:HEADER_BYTES], slot)
    if record is None or not checked(data):
        return None
    start = data.index(PAYLOAD_KEY) + len(PAYLOAD_KEY)
    return record, data[start:CHECK_LENGTH + int(data[20:30]) - 1]


class Store:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.slots_dir = os.path.join(state_dir, "committed")
        self.confirmed_path = os.path.join(self.slots_dir, "confirmed")
        self.pending_path = os.path.join(state_dir, "pending.json")
        # an older agent's files (moved into the slots by load())
        self.legacy_config_path = os.path.join(state_dir, "config.json")
        self._written = {}  # slot -> first bytes of the record this Store wrote and synced
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def free_space(self):
        """(bytes, inodes) an unprivileged writer may still use in the state directory;
        inodes None when the file system does not count them (btrfs)."""
        stats = os.statvfs(self.state_dir)
        return stats.f_bavail * stats.f_frsize, (stats.f_favail if stats.f_files else None)

    # -- reading ---------------------------------------------------------------------------
    def slot_path(self, slot):
        return os.path.join(self.slots_dir, f"{slot}.json")

    def _slot_bytes(self, slot, size=-1):
        try:
            with open(self.slot_path(slot), "rb") as handle:
                return handle.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return b""

    def _headers(self):
        """``{slot: (Record, first bytes)}`` of the slots whose first bytes announce a
        record (not checked: cheap)."""
        found = {}
        for slot in range(SLOTS):
            head = self._slot_bytes(slot, HEADER_BYTES)
            record = parse_header(head, slot)
            if record is not None:
                found[slot] = (record, head)
        return found

    def _valid(self, slot):
        """``(Record, payload bytes)`` of ``slot`` when its check passes, else None."""
        return decode_record(self._slot_bytes(slot), slot)

    def _records(self):
        """The valid records, newest first: ``[(Record, payload bytes), ...]``."""
        found = [self._valid(slot) for slot in range(SLOTS)]
        return sorted((f for f in found if f is not None), key=lambda f: -f[0].number)

    def _newest(self, headers=None):
        """The ``Record`` of the committed generation (the newest whole record), checking
        the slots from the newest header down until one passes. A record this Store wrote
        and synced itself, whose first bytes are still the same, is not read again."""
        headers = self._headers() if headers is None else headers
        for slot, (record, head) in sorted(headers.items(), key=lambda i: -i[1][0].number):
            if self._written.get(slot) == head or checked(self._slot_bytes(slot)):
                return record
        return None

    def _newest_with_payload(self):
        for slot, _ in sorted(self._headers().items(), key=lambda i: -i[1][0].number):
            found = self._valid(slot)
            if found is not None:
                return found
        return None

    @staticmethod
    def _generation(found):
        record, payload = found
        return Generation(record.number, json.loads(payload), record.hash,
                          record.committed_at)

    def load(self) -> Optional[Generation]:
        """The committed generation; when it still awaits confirmation (the agent restarted
        before the orchestrator confirmed it), the previous one, committed again under the
        next number. Moves an older agent's files into the slots first."""
        if os.path.exists(self.legacy_config_path):
            self._migrate()
        newest = self._newest_with_payload()
        if newest is None:
            return None
        record = newest[0]
        previous = self.load_previous() if self._awaiting(record) is not None else None
        if previous is None:
            return self._generation(newest)
        return self.commit(record.number + 1, previous.payload, previous.hash,
                           keep_previous=False)

    def current(self) -> Optional[Generation]:
        """The committed generation as it is (``load`` also settles one awaiting
        confirmation); an older agent's config.json when nothing was moved yet."""
        newest = self._newest_with_payload()
        if newest is None:
            return self._legacy(self.legacy_config_path)
        return self._generation(newest)

    def load_previous(self) -> Optional[Generation]:
        """The generation a revert goes to (the committed one's ``previous``)."""
        newest = self._newest()
        if newest is None or newest.previous is None:
            return None
        return self.load_generation(newest.previous)

    def _kept(self, records):
        """The records a rollback may go to: the committed one and the KEEP_GENERATIONS
        before it, newest first, and the one a revert goes to."""
        if not records:
            return []
        current = records[0][0]
        listed = records[:KEEP_GENERATIONS + 1]
        listed += [f for f in records[KEEP_GENERATIONS + 1:]
                   if f[0].number == current.previous]
        return listed

    def generations(self):
        """The generations a rollback can go to, newest first, as ``GenerationHeader``
        (``load_generation`` reads a payload)."""
        return [GenerationHeader(r.number, r.hash, r.committed_at)
                for r, _ in self._kept(self._records())]

    def load_generation(self, number) -> Optional[Generation]:
        """Generation ``number`` when it is the committed one or kept, else None."""
        for found in self._kept(self._records()):
            if found[0].number == number:
                return self._generation(found)
        return None

    def _awaiting(self, record):
        if record is None or not record.awaiting:
            return None
        try:
            with open(self.confirmed_path, "rb") as handle:
                if int(handle.read(32).split()[0]) == record.number:
                    return None
        except (FileNotFoundError, ValueError, IndexError):
            pass
        return record.number

    def awaiting(self) -> Optional[int]:
        """The generation that awaits confirmation, or None."""
        return self._awaiting(self._newest())

    def confirm(self):
        """Confirm the generation that awaits confirmation (none: nothing to do)."""
        number = self.awaiting()
        if number is None:
            return
        fd = os.open(self.confirmed_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            line = b"%d\n" % number
            os.pwrite(fd, line, 0)
            os.ftruncate(fd, len(line))
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------
    def commit(self, number, payload=None, digest=None, raw=None, awaiting=False,
               keep_previous=True) -> Generation:
        """Persist generation ``number``, the one after the committed one, durably: its
        ``payload`` or the JSON bytes ``raw`` it was decoded from (written as they are; the
        engine passes these and the ``digest``). ``awaiting``: the generation awaits
        confirmation (its previous one is then the last confirmed one)."""
        generation = Generation(number, payload, digest or payload_hash(payload), time.time())
        body = raw if raw is not None else msgspec.json.encode(payload)
        headers = self._headers()
        current = self._newest(headers)
        if current is None:
            previous = None
        elif keep_previous and not (awaiting and self._awaiting(current) is not None):
            previous = current.number
        else:
            previous = current.previous
        record = encode_record(number, generation.hash, generation.committed_at, previous,
                               awaiting, body)
        slot = self._victim(headers, current, previous)
        self._written.pop(slot, None)
        self._write_slot(slot, record)
        self._written[slot] = b"".join(bytes(part[:HEADER_BYTES]) for part in record)[
            :HEADER_BYTES]
        return generation

    def _victim(self, headers, current, previous):
        """The slot to overwrite: one holding no generation (or a torn one, numbered past
        the committed one), else the oldest generation but the committed and previous."""
        newest = current.number if current else 0
        numbers = {slot: record.number for slot, (record, _) in headers.items()}
        protected = {current.slot} if current else set()
        protected |= {s for s, n in numbers.items() if n == previous}
        free = [s for s in range(SLOTS) if s not in protected
                and (s not in numbers or numbers[s] > newest)]
        if free:
            return free[0]
        return min((s for s in numbers if s not in protected), key=numbers.get)

    def _write_slot(self, slot, buffers):
        """Overwrite ``slot`` with ``buffers`` and sync it (one ``fdatasync``); on failure
        the slot is emptied, so that no record of a generation never committed remains.
        A record's check gives its length, so nothing after it is read: a shorter record
        than the slot held is followed by spaces up to the file's size (still one JSON
        document) rather than truncated, unless the file is over twice its length (an empty
        record empties it). With no new length to make durable, ``fdatasync`` writes the
        data alone: a 250 KB record in 0.31 ms against 0.58 with a new length each time
        (medians of 300 interleaved on this machine's ext4)."""
        try:
            fd = os.open(self.slot_path(slot), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._create_slots()
            fd = os.open(self.slot_path(slot), os.O_WRONLY | os.O_CLOEXEC)
        try:
            size, record = os.fstat(fd).st_size, sum(map(len, buffers))
            if record < size <= 2 * record:
                buffers = [*buffers, b" " * (size - record)]
            length = sum(map(len, buffers))
            written = os.pwritev(fd, buffers, 0)
            if written != length:  # short (a full file system): the rest, or its error
                data = b"".join(buffers)
                while written < length:
                    written += os.pwrite(fd, data[written:], written)
            if size > length:
                os.ftruncate(fd, length)
            os.fdatasync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                LOG.error("cannot empty slot %s after a failed commit: %s", slot, exc)
            raise
        finally:
            os.close(fd)

    def _create_slots(self):
        """The slot files, empty, durably (once: later commits only overwrite them)."""
        os.makedirs(self.slots_dir, mode=0o700, exist_ok=True)
        for slot in range(SLOTS):
            fd = os.open(self.slot_path(slot), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        fsync_directory(self.slots_dir)
        fsync_directory(self.state_dir)

    # -- an older agent's state directory --------------------------------------------------
    @staticmethod
    def _legacy(path):
        try:
            with open(path) as handle:
                data = json.load(handle)
            return Generation(int(data["generation"]), data["payload"], data["hash"],
                              float(data.get("committed_at", 0)))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _migrate(self):
        """Move an older agent's generations (config.json, previous.json, confirm.json,
        generations/<n>.json) into the slots, durably, then remove those files."""
        directory = os.path.join(self.state_dir, "generations")
        try:
            names = sorted((n for n in os.listdir(directory) if n[:-5].isdigit()),
                           key=lambda n: int(n[:-5]))
        except OSError:
            names = []
        committed = self._legacy(self.legacy_config_path)
        previous = self._legacy(os.path.join(self.state_dir, "previous.json"))
        try:
            with open(os.path.join(self.state_dir, "confirm.json")) as handle:
                awaiting = int(json.load(handle)["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            awaiting = None
        older = {g.number: g for g in (self._legacy(os.path.join(directory, n))
                                       for n in names) if g is not None}
        if committed is None:  # unreadable: left as it is, for a person to look at
            LOG.error("cannot read %s: not moved into %s", self.legacy_config_path,
                      self.slots_dir)
            return
        if previous is not None:
            older[previous.number] = previous
        older.pop(committed.number, None)
        kept = sorted(older)[-(SLOTS - 1):]
        for slot, generation in enumerate([older[n] for n in kept] + [committed]):
            last = generation is committed
            self._write_slot(slot, encode_record(
                generation.number, generation.hash, generation.committed_at,
                previous.number if last and previous else None,
                last and awaiting == committed.number,
                msgspec.json.encode(generation.payload)))
        for slot in range(len(kept) + 1, SLOTS):
            self._write_slot(slot, [b""])
        os.unlink(self.legacy_config_path)  # the slots are durable: the old files can go
        for name in ("previous.json", "confirm.json"):
            try:
                os.unlink(os.path.join(self.state_dir, name))
            except FileNotFoundError:
                pass
        for name in names:
            os.unlink(os.path.join(directory, name))
        try:
            os.rmdir(directory)
        except OSError:
            pass
        # Durably gone before any commit: a config.json back after a power loss would be
        # moved in again, over the generations committed since.
        fsync_directory(self.state_dir)

    # -- the apply in progress ---------------------------------------------------------------
    def load_pending(self):
        try:
            with open(self.pending_path) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def write_pending(self, raw):
        """The JSON bytes of the payload being applied. Not fsync'd: it only matters after
        the agent itself died mid-apply, when the page cache still holds it; after a power
        loss the kernel state is gone anyway."""
        atomic_write(self.pending_path, raw, durable=False)

    def clear_pending(self):
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            pass
