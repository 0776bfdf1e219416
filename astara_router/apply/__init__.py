"""astara appliance agent."""
