"""`gateway doctor`: what is wrong with this box? Every check a technician would make first, at once.

Each check gives one line: ok, warn or fail, what was found and what to do. ``diagnose`` runs them all
concurrently inside one time budget; ``Report.as_dict`` is the stable ``--json`` shape; the exit code is 0 when
all is well, 1 for a warning, 2 for a failure. docs/doctor.md lists the checks and their thresholds.
"""

from gateway.doctor.context import Host, ServiceUser
from gateway.doctor.result import Result, Status
from gateway.doctor.run import BUDGET, Report, diagnose

__all__ = ["BUDGET", "Host", "Report", "Result", "ServiceUser", "Status", "diagnose"]
