"""``neuroflow serve console``: build the console from the NEUROFLOW_* settings and serve it (uvicorn)
until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from neuroflow.console import auth
from neuroflow.console.app import ROUTE_FACTORIES, Console, build_app
from neuroflow.console.oidc import OidcClient
from neuroflow.console.viewer_mount import console_viewer_routes
from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.metrics import start_metrics_server
from neuroflow.core.reviews import review_store

log = logging.getLogger(__name__)


def build_console(settings: NeuroflowSettings) -> Console:
    from neuroflow.runtime.distributed import Backends  # deferred: the runtime's imports only to serve

    backends = Backends(settings)  # installs the site secret first, as every distributed process does
    backends.state().audit_actor = "console"
    users = auth.load_users(settings.console.users_file) if settings.console.users_file else {}
    if not users and not settings.console.oidc.issuer:
        log.warning("console: no local user (NEUROFLOW_CONSOLE__USERS_FILE) and no OIDC provider: nobody can log in")
    codec = auth.SessionCodec(auth.session_key(settings.console.session_secret_file),
                              settings.console.session_hours * 3600)

    def rerun_backends() -> Any:
        return backends
    # A re-run publishes the study's StudyReady for the orchestrator: on an in-memory bus no one would hear it.
    rerun = rerun_backends if settings.bus.kind == "kafka" else None
    oidc = OidcClient(settings.console.oidc) if settings.console.oidc.issuer else None
    return Console(settings=settings, store=backends.state(), reviews=review_store(settings.state), users=users,
                   codec=codec, rerun_backends=rerun, oidc=oidc)


def serve_console(settings: NeuroflowSettings) -> None:
    console = build_console(settings)
    ROUTE_FACTORIES.append(console_viewer_routes)
    start_metrics_server(settings.metrics_port, settings.metrics_host, settings.health,
                         settings.metrics_access)
    options = settings.console
    config = uvicorn.Config(build_app(console), host=options.host, port=options.port, log_level="warning",
                            access_log=False,  # the console logs its actions itself, by pseudonymous key
                            ssl_certfile=str(options.tls_cert_file) if options.tls_cert_file else None,
                            ssl_keyfile=str(options.tls_key_file) if options.tls_key_file else None)
    server = uvicorn.Server(config)
    scheme = "https" if options.tls_cert_file else "http"
    log.info("console on %s://%s:%d/", scheme, options.host, options.port)
    server.run()
