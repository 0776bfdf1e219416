"""Network-namespace lab for astara: each "VM" is a Linux network namespace.

Used by the functional tests, the benchmarks and the interactive lab. The namespace
toolkit itself is the separate package ``astara_netns`` (the orchestrator's namespace
compute driver uses it too, and product code never imports the lab);
astara_lab.leftovers cleans up after crashed runs.
"""
