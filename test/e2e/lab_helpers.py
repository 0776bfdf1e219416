"""What the end-to-end tests and their conftest share."""

# Faster than the lab's default so the tests react quickly; the tests never assert times.
E2E_HEALTH = {"period": 3, "dead_grace": 5, "error_cooldown": 5}
