"""The dashboard's web application: pages for hospital staff and field techs, the REST API, the live feed.

:func:`create_app` builds the FastAPI app on an open store (shared with the
in-process MQTT ingest); :class:`DashboardServer` serves it with uvicorn;
:class:`DashboardService` is all of it (store, ingest, app, server) as
``medge dashboard --config dashboard.toml`` runs it.
Templates and static assets ship inside this package: the pages work with
the network cut off.
"""

from dashboard.web.app import create_app
from dashboard.web.gate import SESSION_COOKIE
from dashboard.web.server import DashboardServer
from dashboard.web.service import DashboardService

__all__ = ["SESSION_COOKIE", "DashboardServer", "DashboardService", "create_app"]
