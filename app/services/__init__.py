"""What the whole process shares, built once by ``serve()`` and passed down explicitly.

- ``_settings``: every setting, its flag and its check (frozen).
- ``_services``: ``Services`` (frozen: settings, verifier, agent, log) and
  ``ServerLifecycle`` (admission count, drain, the timer, the metrics).
- ``_admission``: the ``Admission`` interface (per-user connect budget, open
  connections, abuse cool-down) and ``MemoryAdmission``, one process's.
- ``_admission_redis``: ``RedisAdmission``, the same limits shared by every process
  through one Redis; ``build_admission`` picks one from the settings.
- ``_timer``: one timer for the process: sleeps without a cancel-scope expiry, and
  the runs' deadlines (``Deadline``).
- ``_writes``: ``PassWrites``, which makes the writes the connections ask for in one
  pass of the scheduler together, at the next.
- ``_metrics``: ``Metrics``, the process's counters, read into its own Prometheus
  registry at scrape time.
- ``_build``: the verifier and services from settings.
"""

from ._admission import Admission as Admission
from ._admission import AdmissionLimits as AdmissionLimits
from ._admission import MemoryAdmission as MemoryAdmission
from ._admission import Refusal as Refusal
from ._admission import Refused as Refused
from ._admission import Ticket as Ticket
from ._admission_redis import RedisAdmission as RedisAdmission
from ._admission_redis import build_admission as build_admission
from ._build import build_services as build_services
from ._metrics import Metrics as Metrics
from ._services import ServerLifecycle as ServerLifecycle
from ._services import Services as Services
from ._settings import ConfigError as ConfigError
from ._settings import Settings as Settings
from ._settings import load_settings as load_settings
from ._timer import Alarm as Alarm
from ._timer import Deadline as Deadline
from ._timer import Timer as Timer
from ._writes import PassWrites as PassWrites

__all__ = [
    "Admission",
    "AdmissionLimits",
    "Alarm",
    "ConfigError",
    "Deadline",
    "MemoryAdmission",
    "Metrics",
    "PassWrites",
    "RedisAdmission",
    "Refusal",
    "Refused",
    "ServerLifecycle",
    "Services",
    "Settings",
    "Ticket",
    "Timer",
    "build_admission",
    "build_services",
    "load_settings",
]
