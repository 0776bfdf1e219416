"""astara appliance agent."""

__version__ = "0.1.0"  # of both distributions: astara (the tree) and astara-router (the agent)
