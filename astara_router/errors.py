"""Errors of the apply phase (the model's own errors live in model/errors.py)."""
import contextlib
import errno


class ApplyError(Exception):
    """The kernel or a daemon refused part of a valid configuration.

    ``path`` names the payload field that caused it when known. 422: the payload asks for
    something this appliance cannot realise (unknown NIC, unreachable next hop); 500: the
    appliance itself failed (verification mismatch, daemon crash).
    """

    def __init__(self, path, message, status=422):
        self.path = path
        self.message = message
        self.status = status
        super().__init__(f"{path}: {message}" if path else message)

    def to_dict(self):
        return {"error": "The configuration could not be applied; the previous one is "
                         "still in place",
                "message": str(self),
                "errors": [{"path": self.path, "message": self.message}]}


@contextlib.contextmanager
def state_full_is_507(what):
    """An ENOSPC/EDQUOT while persisting ``what`` in the state directory becomes a 507
    ApplyError (the previous configuration stays); other OSErrors pass through."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ApplyError("", f"the state directory is full: {what} cannot be persisted",
                         status=507) from exc
