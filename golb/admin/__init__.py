"""
The admin site: HTML pages and a JSON API to inspect and steer a running
golb.

  - L{golb.admin.service.AdminService} serves it on C{admin.address};
  - L{golb.admin.site.AdminResource} authenticates and dispatches;
  - L{golb.admin.views} turns live state into JSON-ready data, which
    L{golb.admin.pages} renders as HTML;
  - L{golb.admin.control} makes the changes (backend state and weight,
    reload), each written to the audit trail;
  - L{golb.admin.explain} tells what golb would do with a request.

See docs/admin-api.md and docs/operations.md.
"""

from golb.admin._records import AuditLog, ErrorLog, RateMeter
from golb.admin.control import AdminError
from golb.admin.service import AdminService, AdminSite, AdminStartError
from golb.admin.site import AdminResource

__all__ = [
    "AdminError",
    "AdminResource",
    "AdminService",
    "AdminSite",
    "AdminStartError",
    "AuditLog",
    "ErrorLog",
    "RateMeter",
]
