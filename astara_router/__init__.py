"""astara appliance agent."""

__version__ = "0.1.0"  # of both distributions: astara (the tree) and astara-router (the agent)

# The banner (GET /v1/), here rather than in astara_router.api so that the flask-free agent
# stand-ins (test/bench/standin_agent.py, test/unit/sim_appliances.py) advertise exactly
# what the agent does. The banner advertises what this agent offers; an orchestrator uses
# only what an appliance advertises, so appliances of older images keep working during a
# fleet upgrade. The original appliance's API (liveness on /v1/firewall/rules,
# GET /v1/system/interfaces, PUT /v1/system/config) is version 1.0 and advertises nothing.
BANNER = "Astara appliance API service is active"
API_VERSION = "1.1"
CAPABILITIES = (
    "config-hash",  # GET /v1/system/config: generation + hash, ETag, 304 on If-None-Match
    "status",  # GET /v1/status/: ready/degraded with reasons, reachability of the probe targets
)
