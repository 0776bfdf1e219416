"""What an appliance advertises in its banner (``GET /v1/``), so the orchestrator uses only
what each appliance offers: during a fleet upgrade, appliances of older images keep
working next to new ones.

The agent's banner carries ``api_version`` and ``capabilities`` (astara_router/api). A
banner without them is the original appliance's API, version 1.0: liveness on
``/v1/firewall/rules``, ``GET /v1/system/interfaces`` and ``PUT /v1/system/config``, nothing
more. What the orchestrator does with each capability:

* ``config-hash``: drift detection reads the committed hash (``GET /v1/system/config`` with
  ``If-None-Match``); without it the orchestrator trusts the hash of its own last
  successful push (and pushes once after a restart, since it knows none).
* ``status``: every health poll reads ``GET /v1/status/``; a degraded appliance (a daemon
  down, a failed repair) is re-pushed and its reason shown; without it none is read.
"""
import dataclasses

CONFIG_HASH = "config-hash"
STATUS = "status"
LEGACY_VERSION = "1.0"


@dataclasses.dataclass(frozen=True)
class ApplianceApi:
    version: str = LEGACY_VERSION
    capabilities: frozenset = frozenset()

    @classmethod
    def from_banner(cls, banner):
        if not isinstance(banner, dict) or "api_version" not in banner:
            return cls()
        capabilities = banner.get("capabilities")
        if not isinstance(capabilities, list):
            capabilities = []
        return cls(str(banner["api_version"]),
                   frozenset(c for c in capabilities if isinstance(c, str)))

    def has(self, capability):
        return capability in self.capabilities

    def as_dict(self):
        return {"api_version": self.version, "capabilities": sorted(self.capabilities)}
