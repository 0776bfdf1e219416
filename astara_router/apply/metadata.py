"""The metadata proxy, served from the agent's own process.

One listener per tenant network (``metadata_proxy.Proxy``), bound to the router's address
there, all accepted by one thread. Serving it in process instead of as its own program saves
a Python interpreter per appliance (memory: README, "Decisions") and the program's start on the
first apply — most of the cold apply's time before. Its request log goes to
``<state_dir>/metadata/proxy.log``.

plan:     the proxy's configuration text (render/metadata.py), or None without tenant
          networks; the proxy's own parser is the checker (of the data the text was
          written from, when that is the plan's).
apply:    the running proxy takes the new text in place (listeners that stay keep
          serving; new ones are bound, stale ones closed); nothing when it already serves it.
verify:   the proxy serves exactly the planned text.
restore:  the previous text again, or no proxy.
"""
import logging
import logging.handlers
import os

from ..errors import ApplyError
from ..metadata_proxy import (LOG as PROXY_LOG, ConfigError, Proxy, config_digest,
                              parse_config, parse_config_data)
from ..render.metadata import proxy_config, proxy_config_text

LOG = logging.getLogger(__name__)


class MetadataSubsystem:
    name = "metadata"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.settings = settings
        self.dir = settings.path("metadata")
        self.log_path = os.path.join(self.dir, "proxy.log")
        self.proxy = Proxy()
        self._logging = False
        self._checked = (None, None)  # (text, its parsed form): check() parsed it already
        # (text, the data plan() wrote it from): check() parses the data, whose strings
        # are the model's (until the next check or plan; a plan without a check, as a
        # dry run, keeps it until then)
        self._planned = (None, None)

    def _log_to_file(self):
        """Requests are logged to the appliance's own proxy.log, once per process."""
        if self._logging:
            return
        os.makedirs(self.dir, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        PROXY_LOG.addHandler(handler)
        PROXY_LOG.setLevel(logging.INFO)
        self._logging = True

    def _serve(self, text):
        if text is None:
            self.proxy.close()
            return
        self._log_to_file()
        (checked, config), self._checked = self._checked, (None, None)
        try:
            self.proxy.serve(text, config if checked == text else None)
        except (OSError, ConfigError) as exc:
            raise ApplyError("", f"metadata proxy: {exc}", status=500) from exc

    # -- subsystem interface -------------------------------------------------------------------
    def plan(self, config, names):
        data = proxy_config(config, self.settings.metadata_connect_timeout,
                            self.settings.metadata_read_timeout)
        text = None if data is None else proxy_config_text(data)
        self._planned = (text, data)
        return text

    def check(self, plan, base):
        (planned, data), self._planned = self._planned, (None, None)
        if plan is not None and plan != base:
            try:  # the proxy's own parser is the checker
                self._checked = (plan, parse_config_data(data) if planned is plan
                                 else parse_config(plan))
            except ConfigError as exc:
                raise ApplyError("", f"metadata proxy configuration rejected: {exc}",
                                 status=500) from exc

    def healthy(self, plan):
        return plan == self.proxy.text and self.proxy.alive()

    def capture(self, ctx, plan, base):
        return self.proxy.text

    def apply(self, ctx, plan, base, snapshot):
        if self.healthy(plan):
            return 0
        self._serve(plan)
        return 1

    def verify(self, ctx, plan, base, changes):
        wanted = config_digest(plan) if plan is not None else None
        if self.proxy.digest != wanted or not self.proxy.alive():
            raise ApplyError("", "the metadata proxy does not serve the planned "
                                 "configuration", status=500)

    def restore(self, ctx, snapshot, changes):
        if changes != 0 and snapshot != self.proxy.text:
            self._serve(snapshot)
