"""Memoization of pure per-object render work, keyed by the model object's identity.

The parser hands out the same (immutable) model object for an unchanged network entry
(model/parse.py), so a push that changes one of fifty networks re-renders one. Identity,
not equality: hashing a network with hundreds of allocations costs about as much as
rendering it. An entry lives as long as its object.
"""
import functools
import weakref


def per_object(function):
    """``function(obj, *args)`` → its result, computed once per (obj, args) while ``obj``
    lives (``args`` must be hashable and small)."""
    cache = {}

    @functools.wraps(function)
    def memoized(obj, *args):
        key = (id(obj), args)
        hit = cache.get(key)
        if hit is not None and hit[0]() is obj:
            return hit[1]
        value = function(obj, *args)
        cache[key] = (weakref.ref(obj, lambda _ref, key=key: cache.pop(key, None)), value)
        return value

    memoized.cache = cache
    return memoized
