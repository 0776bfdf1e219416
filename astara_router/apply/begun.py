"""Work a subsystem has begun and the engine waits for later (``start_check``,
``start_apply``: apply/__init__.py): ``wait()`` gives its result or raises its error,
``cancel()`` gives up on a check."""
import contextvars
import threading


class Done:
    """Work that was done at once (or had nothing to do): ``wait()`` returns ``value``."""

    def __init__(self, value=None):
        self.value = value

    def wait(self):
        return self.value

    def cancel(self):
        pass


class InThread:
    """``function(*args)`` running in a thread of its own, with the caller's log fields
    (``logs.log_fields``: a contextvars context); ``wait()`` joins it and returns its result
    or raises what it raised. For work that waits on the kernel or on another process
    (a libnftables load, a daemon's start) while the caller's thread goes on with Python."""

    def __init__(self, name, function, *args):
        self._result = self._error = None
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._run, args=(context, function, args),
                                        name=name, daemon=True)
        self._thread.start()

    def _run(self, context, function, args):
        try:
            self._result = context.run(function, *args)
        except BaseException as exc:  # handed to wait(), in the caller's thread
            self._error = exc

    def wait(self):
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result
