"""What the whole process shares, built once by ``serve()`` and passed down explicitly.

- ``_settings``: every setting, its flag and its check (frozen).
- ``_services``: ``Services`` (frozen: settings, verifier, agent, log) and
  ``ServerLifecycle`` (admission count, drain, the timer, the metrics).
- ``_admission``: per-user connect budgets and the abuse cool-down.
- ``_timer``: one timer for the process: sleeps without a cancel-scope expiry.
- ``_metrics``: ``Metrics``, the process's counters, read into its own Prometheus
  registry at scrape time.
- ``_build``: the verifier and services from settings.
"""

from ._build import build_services as build_services
from ._metrics import Metrics as Metrics
from ._services import ServerLifecycle as ServerLifecycle
from ._services import Services as Services
from ._settings import ConfigError as ConfigError
from ._settings import Settings as Settings
from ._settings import load_settings as load_settings
from ._timer import Alarm as Alarm
from ._timer import Timer as Timer

__all__ = [
    "Alarm",
    "ConfigError",
    "Metrics",
    "ServerLifecycle",
    "Services",
    "Settings",
    "Timer",
    "build_services",
    "load_settings",
]
