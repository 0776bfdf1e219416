"""Why the store refused a write or a lookup; each error knows its HTTP answer."""


class StoreError(Exception):
    """A refused write; ``status`` is the HTTP answer, ``field`` the offending key."""
    status = 400

    def __init__(self, message, field=None, status=None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    def to_dict(self):
        body = {"error": type(self).__name__, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Fenced(StoreError):
    """This orchestrator is no longer the resource's owner at the epoch it holds: another
    one took it over (or the coordination lease could not be confirmed). Nothing was
    written; the caller must stop working on the resource."""
    status = 409
