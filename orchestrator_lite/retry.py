"""Exponential back-off with jitter, shared by the appliance client (HTTP retries) and the
state machine (boot and push retries), so every retry in the orchestrator spaces out the
same way and never spins."""
import random

_rng = random.SystemRandom()


def backoff_delay(attempt, base, cap, rng=None):
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    "Equal jitter": half of the exponential step is fixed, half random, so a retry always
    waits at least base/2 (never a tight loop) and many resources that failed together do
    not retry in lockstep.
    """
    rng = rng or _rng
    step = min(cap, base * (2 ** max(0, attempt - 1)))
    return step / 2 + rng.uniform(0, step / 2)


def jittered(period, fraction, rng=None):
    """``period`` moved by up to ±``fraction`` of itself, at random."""
    rng = rng or _rng
    return period * (1 + rng.uniform(-fraction, fraction))
