"""Network-namespace lab for astara: each "VM" is a Linux network namespace.

Used by the functional tests, the interactive lab and the orchestrator's
namespace compute driver. See astara_lab.netns for the toolkit and
astara_lab.leftovers for cleaning up after crashed runs.
"""
