"""Errors raised while turning a request body into the model.

Every error names the JSON path of the offending field (``networks[2].interface.addresses[0]``)
so the orchestrator's operator sees exactly what to fix.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class PayloadError(Exception):
    """A body that cannot become a configuration. ``status`` is the HTTP answer."""

    status = 422
    title = "The configuration is not valid"

    def __init__(self, errors):
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    def to_dict(self):
        return {
            "error": self.title,
            "message": str(self),
            "errors": [{"path": e.path, "message": e.message} for e in self.errors],
        }


class UnsupportedService(PayloadError):
    """The body asks for an advanced service this appliance does not run (original: 400)."""

    status = 400
    title = "This appliance cannot service the requested advanced service"
