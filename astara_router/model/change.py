"""What a push changes when it changes floating IPs alone (the usual push): the few added
and removed, so the subsystems that map floating IPs patch their committed plan instead of
planning a thousand again (``plan_floating_ips`` in apply/__init__.py)."""
from dataclasses import dataclass

MAX_PATCHED = 64  # beyond this many changed floating IPs a whole plan costs about the same


@dataclass(frozen=True)
class FloatingIPChange:
    added: tuple  # FloatingIP: in the new configuration, not in the committed one
    removed: tuple  # FloatingIP: in the committed configuration, not in the new one
    added_at: tuple = ()  # the index of each added one in the new configuration's


def floating_ip_change(old, new, limit=MAX_PATCHED):
    """The floating IPs the tuple ``new`` adds and removes compared with ``old``, or None
    when more than ``limit`` changed. A push repeats the others in the same order, and the
    parser hands out the same FloatingIP object for a pair it parsed in the last two pushes
    (model/parse.py): the common head and tail are found by comparing slices (in C, by
    identity first), and only what lies between them is looked at one by one."""
    head, tail = common_ends(old, new)
    old, new = old[head:len(old) - tail], new[head:len(new) - tail]
    if len(old) + len(new) > 2 * limit:
        old_ids, new_ids = set(map(id, old)), set(map(id, new))
        if len(new_ids - old_ids) + len(old_ids - new_ids) > limit:
            return None
    old_ids, new_ids = set(map(id, old)), set(map(id, new))
    added_at = tuple(head + i for i, f in enumerate(new) if id(f) not in old_ids)
    removed = tuple(f for f in old if id(f) not in new_ids)
    if len(added_at) + len(removed) > limit:
        return None
    return FloatingIPChange(tuple(new[i - head] for i in added_at), removed, added_at)


def common_ends(first, second):
    """``(head, tail)``: how many leading and how many further trailing items the sequences
    ``first`` and ``second`` share (the tail never overlaps the head). Lists and tuples are
    compared by slices (in C, by identity first); bytes in place (``second`` may be a
    memoryview of bytes): each step is one ``startswith`` of a memoryview slice (a memcmp),
    where slicing bytes copies them (a 250 KB body: 0.5 ms of copies and fresh pages in the
    worker against 0.05)."""
    ends = len(first), len(second)
    if isinstance(first, bytes):
        other = memoryview(second)

        def same_head(start, stop):
            return first.startswith(other[start:stop], start)

        def same_tail(start, stop):
            return first.startswith(other[ends[1] - stop:ends[1] - start], ends[0] - stop)
    else:
        def same_head(start, stop):
            return first[start:stop] == second[start:stop]

        def same_tail(start, stop):
            return (first[ends[0] - stop:ends[0] - start]
                    == second[ends[1] - stop:ends[1] - start])
    head = _common_length(min(ends), same_head)
    return head, _common_length(min(ends) - head, same_tail)


def _common_length(upper, same):
    """The largest n <= ``upper`` such that the items from 0 to n are the same, where
    ``same(start, stop)`` compares those from ``start`` to ``stop`` (counted from the
    head or from the tail) knowing those before ``start`` are: a binary search comparing
    only the part not yet known equal, so O(n) comparisons in all."""
    known = 0
    while known < upper:
        middle = (known + upper + 1) // 2
        if same(known, middle):
            known = middle
        else:
            upper = middle - 1
    return known


def external_names(config, fips, names=None):
    """(geN or, given ``names`` (geN -> kernel name), kernel name, floating IP) of ``fips``
    on their external network; None for a floating IP on none or on an unknown name."""
    found = []
    for fip in fips:
        network = config.external_interface_for(fip.floating_ip)
        if network is None:
            return None
        name = network.interface.ifname
        if names is not None:
            name = names.get(name)
            if name is None:
                return None
        found.append((name, fip))
    return found


class Checked:
    """Floating IPs a check found good, with what else its verdict depended on (its
    ``context``, compared by equality: the parser hands out the same objects for unchanged
    networks, so that is cheap): a push repeats nearly all of them, so only those added
    since need the check again. Keeps the last verdict only (its floating IPs stay alive:
    usually the committed ones)."""

    def __init__(self):
        self.last = None  # (context, floating IPs found good)

    def unchecked(self, context, fips):
        """``[(index, FloatingIP), ...]`` of ``fips`` that were not found good under
        ``context``, or None when that is not known (check everything)."""
        last = self.last
        if last is None or last[0] != context:
            return None
        change = floating_ip_change(last[1], fips)
        if change is None:
            return None
        return list(zip(change.added_at, change.added))

    def passed(self, context, fips):
        """Every floating IP of ``fips`` passed the check under ``context``."""
        self.last = (context, fips)
