"""The console's web application (Starlette, server-rendered with Jinja2; a little JavaScript from /static
refreshes the worklist). Every page but the log-in needs a session with a user; every POST needs the
session's CSRF token and the permission of its action; every action on a study goes into its audit trail.

Other modules add pages through ``ROUTE_FACTORIES`` (below): each is called with the ``Console`` and gives
Starlette routes, mounted before the console's own, so a factory's ``/studies/{study_key}/viewer`` replaces
the placeholder here.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from neuroflow.admin import operations
from neuroflow.admin.operations import AdminRefused, Store
from neuroflow.console import auth
from neuroflow.console.auth import CSRF_FIELD, SESSION_COOKIE, Permission, Role, Session, SessionCodec
from neuroflow.console.oidc import OidcClient, OidcRefused
from neuroflow.console.worklist import WorklistFilter, model_label, read_report, study_page, worklist
from neuroflow.core import metrics
from neuroflow.core.audit import SESSIONS_CHAIN, AuditAction
from neuroflow.core.config import CHANGE_PIPELINES, NeuroflowSettings, routed_pipelines
from neuroflow.core.reviews import Decision, InvalidReview, ReviewDecision, ReviewStore

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
OIDC_COOKIE = "neuroflow_console_oidc"
_STATUS_OF_REFUSAL = 409  # a refused operation (already replayed, delivered...): nothing changed


@dataclass
class Console:
    """What the pages work with: settings, the state store, the review store, the local users."""

    settings: NeuroflowSettings
    store: Store
    reviews: ReviewStore
    users: dict[str, auth.LocalUser]
    codec: SessionCodec
    # Builds what a re-run needs (the record store and the bus); deferred: the bus connects to Kafka.
    rerun_backends: Callable[[], Any] | None = None
    oidc: OidcClient | None = None  # log-in through the site's OIDC provider, when configured
    templates: Environment = field(default_factory=lambda: _templates())

    @property
    def secure_cookie(self) -> bool:
        return self.settings.console.cookie_secure or self.settings.console.tls_cert_file is not None


def _templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape(default=True))
    environment.filters["isotime"] = operations.iso
    return environment


RouteFactory = Callable[[Console], list[BaseRoute]]
# The registration point of other console modules: each factory's routes come before the console's own (so one
# may serve /studies/{study_key}/viewer); its pages call ``require`` and record with ``actor``. A response may set
# its own Content-Security-Policy (the default allows scripts and images from this origin only). The image
# viewer registers in neuroflow/console/service.py (``ROUTE_FACTORIES.append(...)``, before ``build_app``).
ROUTE_FACTORIES: list[RouteFactory] = []


def build_app(console: Console) -> Starlette:
    pages = _Pages(console)
    routes: list[BaseRoute] = [route for factory in ROUTE_FACTORIES for route in factory(console)]
    routes += [
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/oidc/login", pages.oidc_login, methods=["GET"]),
        Route("/oidc/callback", pages.oidc_callback, methods=["GET"]),
        Route("/", pages.worklist_page, methods=["GET"]),
        Route("/worklist/rows", pages.worklist_rows, methods=["GET"]),
        Route("/dead-letters", pages.dead_letters, methods=["GET"]),
        Route("/dead-letters/{letter_id}/replay", pages.replay, methods=["POST"]),
        Route("/destinations", pages.destinations, methods=["GET"]),
        Route("/destinations/{destination}/{action}", pages.pause_or_resume, methods=["POST"]),
        Route("/pipelines", pages.pipelines, methods=["GET"]),
        Route("/pipelines/{pipeline}/{action}", pages.pause_or_resume_pipeline, methods=["POST"]),
        Route("/studies/{study_key}", pages.study, methods=["GET"]),
        Route("/studies/{study_key}/rerun", pages.rerun, methods=["POST"]),
        Route("/studies/{study_key}/cancel", pages.cancel, methods=["POST"]),
        Route("/studies/{study_key}/review", pages.review, methods=["POST"]),
        Route("/studies/{study_key}/viewer", pages.viewer_placeholder, methods=["GET"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_security_headers)])


async def _security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    # Pages hold clinical data: never cached, never framed, scripts only from here.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
    return response


def session_of(console: Console, request: Request) -> Session | None:
    return console.codec.decode(request.cookies.get(SESSION_COOKIE))


def set_session(console: Console, response: Response, session: Session) -> None:
    response.set_cookie(SESSION_COOKIE, console.codec.encode(session), max_age=int(console.codec.lifetime_s),
                        httponly=True, samesite="strict", secure=console.secure_cookie, path="/")


async def require(console: Console, request: Request, permission: Permission) -> Session | Response:
    """The request's session when its user may do ``permission`` (and, for a POST, its CSRF token is the
    session's); else the response that refuses it: the log-in page for a GET without a user, 403 otherwise."""
    session = session_of(console, request)
    if session is None or session.user is None:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("log in first", status_code=403)
    if request.method == "POST":
        form = await request.form()
        if not auth.csrf_ok(session, _text(form.get(CSRF_FIELD))):
            log.warning("console: POST %s by %s refused: CSRF token missing or wrong", request.url.path, session.user)
            return PlainTextResponse("refused: the form's CSRF token is missing or wrong; reload the page",
                                     status_code=403)
    if not auth.allowed(session.role, permission):
        log.warning("console: %s %s by %s (%s) refused: needs %s", request.method, request.url.path, session.user,
                    session.role, permission)
        return PlainTextResponse(f"refused: your role ({session.role}) may not {permission.value}", status_code=403)
    return session


def actor(session: Session) -> str:
    """Who the audit trail names for a console user's action."""
    return f"console/{session.user}"


class _Pages:
    def __init__(self, console: Console) -> None:
        self.c = console

    def render(self, name: str, session: Session | None, status_code: int = 200, **context: Any) -> HTMLResponse:
        template = self.c.templates.get_template(name)
        body = template.render(session=session, csrf_field=CSRF_FIELD, refresh_s=self.c.settings.console.refresh_s,
                               can_review=auth.allowed(session.role if session else None, Permission.REVIEW),
                               can_operate=auth.allowed(session.role if session else None, Permission.OPERATE),
                               site=self.c.settings.site, change_pipelines=CHANGE_PIPELINES, **context)
        return HTMLResponse(body, status_code=status_code)

    # -- log-in ----------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        session = session_of(self.c, request)
        if session is not None and session.user is not None:
            return RedirectResponse("/", status_code=303)
        session = session or self.c.codec.new()
        response = self.render("login.html", session, oidc=self.c.oidc is not None, error="")
        set_session(self.c, response, session)
        return response

    async def login(self, request: Request) -> Response:
        session = session_of(self.c, request)
        form = await request.form()
        if not auth.csrf_ok(session, _text(form.get(CSRF_FIELD))):
            return PlainTextResponse("refused: the form's CSRF token is missing or wrong; reload the page",
                                     status_code=403)
        name, password = _text(form.get("username")), _text(form.get("password"))
        user = await run_in_threadpool(auth.check_password, self.c.users, name, password)
        if user is None:
            log.warning("console: log-in refused for user %r", name[:64])
            await run_in_threadpool(self._record_session, AuditAction.LOG_IN_REFUSED, None,
                                    {"user": name[:64], "how": "password", "why": "wrong user name or password"})
            return self.render("login.html", session, status_code=401, oidc=self.c.oidc is not None,
                               error="Wrong user name or password.")
        log.info("console: %s logged in (%s)", user.name, user.role)
        await run_in_threadpool(self._record_session, AuditAction.LOGGED_IN, user.name,
                                {"role": user.role.value, "how": "password"})
        response = RedirectResponse("/", status_code=303)
        set_session(self.c, response, self.c.codec.new(user=user.name, role=user.role))  # a new token
        return response

    async def oidc_login(self, request: Request) -> Response:
        """To the provider, with a new state and nonce kept in the (signed) session cookie."""
        if self.c.oidc is None:
            return PlainTextResponse("this console has no OIDC provider", status_code=404)
        session = self.c.codec.new(oidc_state=secrets.token_urlsafe(24), oidc_nonce=secrets.token_urlsafe(24))
        assert session.oidc_state is not None and session.oidc_nonce is not None
        try:
            url = await run_in_threadpool(self.c.oidc.authorization_url, session.oidc_state, session.oidc_nonce)
        except OidcRefused as refused:
            log.warning("console: OIDC log-in not started: %s", refused)
            return self.render("message.html", None, status_code=502, title="Log-in unavailable", message=str(refused))
        response = RedirectResponse(url, status_code=303)
        # Its own cookie, SameSite=Lax: the provider's redirect back is a cross-site navigation, which a
        # Strict cookie (the session's) would not come with.
        response.set_cookie(OIDC_COOKIE, self.c.codec.encode(session), max_age=600, httponly=True, samesite="lax",
                            secure=self.c.secure_cookie, path="/oidc/")
        return response

    async def oidc_callback(self, request: Request) -> Response:
        """Back from the provider: the state must be this browser's; the code is exchanged for the user."""
        session = self.c.codec.decode(request.cookies.get(OIDC_COOKIE))
        if self.c.oidc is None:
            return PlainTextResponse("this console has no OIDC provider", status_code=404)
        state, code = request.query_params.get("state", ""), request.query_params.get("code", "")
        if session is None or not session.oidc_state or not state or not secrets.compare_digest(state,
                                                                                                 session.oidc_state):
            await run_in_threadpool(self._record_session, AuditAction.LOG_IN_REFUSED, None,
                                    {"how": "oidc", "why": "the log-in was not started in this browser (state)"})
            return PlainTextResponse("refused: this log-in was not started here (state); log in again",
                                     status_code=403)
        if not code:
            said = request.query_params.get("error", "?")[:200]
            await run_in_threadpool(self._record_session, AuditAction.LOG_IN_REFUSED, None,
                                    {"how": "oidc", "why": f"the provider said {said}"})
            return self.render("message.html", None, status_code=401, title="Not logged in",
                               message=f"The provider did not log you in: {request.query_params.get('error', '?')}")
        try:
            user = await run_in_threadpool(self.c.oidc.log_in, code, session.oidc_nonce or "")
        except OidcRefused as refused:
            log.warning("console: OIDC log-in refused: %s", refused)
            await run_in_threadpool(self._record_session, AuditAction.LOG_IN_REFUSED, None,
                                    {"how": "oidc", "why": str(refused)[:300]})
            return self.render("message.html", None, status_code=403, title="Not logged in", message=str(refused))
        log.info("console: %s logged in through OIDC (%s)", user.name, user.role)
        await run_in_threadpool(self._record_session, AuditAction.LOGGED_IN, user.name,
                                {"role": user.role.value, "how": "oidc"})
        # A page of our own that moves on to the worklist, not a redirect: a redirect would still belong to the
        # provider's cross-site navigation, and the browser would hold the new Strict session cookie back.
        response = self.render("continue.html", None)
        set_session(self.c, response, self.c.codec.new(user=user.name, role=user.role))
        response.delete_cookie(OIDC_COOKIE, path="/oidc/")  # state and nonce spent
        return response

    async def logout(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        log.info("console: %s logged out", checked.user)
        await run_in_threadpool(self._record_session, AuditAction.LOGGED_OUT, checked.user, {})
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def _record_session(self, action: str, user: str | None, detail: dict[str, Any]) -> None:
        """A log-in, log-out or refused log-in, in the site's sessions chain of the audit trail: the staff
        user's name and how, never a password (nor anything of a patient)."""
        self.c.store.audit_append(SESSIONS_CHAIN, action, detail, actor=f"console/{user}" if user else "console")

    # -- the worklist ----------------------------------------------------------------------------------

    def _worklist(self, request: Request) -> Any:
        selection = WorklistFilter(status=request.query_params.get("status", ""),
                                   pipeline=request.query_params.get("pipeline", ""))
        return selection, worklist(self.c.store, self.c.reviews, self.c.settings.reports_dir, selection)

    async def worklist_page(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        selection, listing = await run_in_threadpool(self._worklist, request)
        return self.render("worklist.html", checked, selection=selection, worklist=listing, now=_now())

    async def worklist_rows(self, request: Request) -> Response:
        """The worklist's rows alone, for the page's refresh."""
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        _, listing = await run_in_threadpool(self._worklist, request)
        return self.render("worklist_rows.html", checked, worklist=listing)

    # -- a study ---------------------------------------------------------------------------------------

    async def study(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        key = request.path_params["study_key"]
        try:
            page = await run_in_threadpool(study_page, self.c.store, self.c.reviews, self.c.settings.reports_dir,
                                           key, actor(checked))
        except AdminRefused as refused:
            return self.render("message.html", checked, status_code=404, title="No such study", message=str(refused))
        return self.render("study.html", checked, page=page, message=request.query_params.get("done", ""))

    async def viewer_placeholder(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        return self.render("message.html", checked, status_code=404, title="Viewer",
                           message="The image viewer is not installed in this console.")

    # -- review (radiologist) --------------------------------------------------------------------------

    async def review(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.REVIEW)
        if isinstance(checked, Response):
            return checked
        key = request.path_params["study_key"]
        form = await request.form()
        workflow = await run_in_threadpool(self.c.store.get, _text(form.get("workflow_id")))
        if workflow is None or workflow.study_key != key:
            return PlainTextResponse(f"study {key}: no such result to review", status_code=404)
        try:
            decision = Decision(_text(form.get("decision")))
            quality_text = _text(form.get("quality"))
            quality = int(quality_text) if quality_text else None
        except ValueError:
            return PlainTextResponse(f"study {key}: the decision must be accepted or rejected and the quality score "
                                     "a whole number 1 to 5", status_code=400)
        report = await run_in_threadpool(read_report, self.c.settings.reports_dir, key, workflow.workflow_id)
        review = ReviewDecision(study_key=key, workflow_id=workflow.workflow_id, pipeline=workflow.pipeline,
                                model=model_label(report), decision=decision, quality=quality,
                                reviewer=checked.user or "", comment=_text(form.get("comment")).strip(),
                                removed_components=sorted({_text(v) for v in form.getlist("remove")}))
        try:
            stored = await run_in_threadpool(self._record_review, review, checked)
        except InvalidReview as invalid:
            return PlainTextResponse(str(invalid), status_code=400)
        log.info("console: study %s workflow %s %s by %s", key, workflow.workflow_id, stored.decision.value,
                 checked.user)
        return RedirectResponse(f"/studies/{key}?done=review+recorded", status_code=303)

    def _record_review(self, review: ReviewDecision, session: Session) -> ReviewDecision:
        stored = self.c.reviews.record(review)
        withheld: list[str] = []
        retracting: list[str] = []
        correcting: list[str] = []
        if stored.decision == Decision.ACCEPTED and stored.removed_components:
            # Accepted without some components: the delivering service builds the corrected SEG and a
            # superseding SR (results/correction.py) for every destination the result reached or was owed to;
            # one it had not reached yet gets only the corrected result.
            correcting = self.c.store.request_corrections(
                review.workflow_id, stored.review_id, now=stored.decided_at,
                give_up_at=stored.decided_at + self.c.settings.delivery.retry_for_s)
            withheld = self.c.store.withhold_deliveries(
                review.workflow_id, f"withheld: corrected by {session.user} in the console; the corrected result "
                "is sent instead", now=stored.decided_at)
        if stored.decision == Decision.REJECTED:
            # A rejected result must never be reported: what has not reached the PACS yet stays at the site;
            # where it has (or is being sent now), the delivery loop sends a superseding retraction notice.
            reason = f"withheld: the result was rejected by {session.user} in the console"
            withheld, retracting = self.c.store.reject_result(
                review.workflow_id, reason, now=stored.decided_at,
                give_up_at=stored.decided_at + self.c.settings.delivery.retry_for_s)
        self.c.store.audit_append(review.study_key, AuditAction.REVIEWED, {
            "workflow_id": review.workflow_id, "decision": stored.decision.value, "quality": stored.quality,
            "removed_components": stored.removed_components, "model": stored.model,
            "retracted": stored.decision == Decision.REJECTED, "deliveries_withheld": withheld,
            "retractions_owed": retracting, "corrections_owed": correcting},
            actor=actor(session))
        metrics.REVIEW_DECISIONS.labels(self.c.settings.site, review.pipeline, review.model,
                                        stored.decision.value).inc()
        return stored

    # -- operations (operator) -------------------------------------------------------------------------

    async def dead_letters(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        letters = await run_in_threadpool(operations.list_dead_letters, self.c.store, include_replayed=True)
        return self.render("dead_letters.html", checked, letters=letters, message=request.query_params.get("done", ""))

    async def replay(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.OPERATE)
        if isinstance(checked, Response):
            return checked
        letter_id = request.path_params["letter_id"]
        try:
            done = await run_in_threadpool(
                lambda: operations.replay_dead_letter(self.c.store, letter_id,
                                                      delivery_period_s=self.c.settings.delivery.retry_for_s,
                                                      actor=actor(checked)))
        except AdminRefused as refused:
            return self.render("message.html", checked, status_code=_STATUS_OF_REFUSAL, title="Not replayed",
                               message=str(refused))
        log.info("console: dead letter %s replayed by %s", letter_id, checked.user)
        return RedirectResponse(f"/dead-letters?done={_query(done['replayed'])}", status_code=303)

    def _destinations(self) -> list[dict[str, Any]]:
        counts: dict[str, dict[str, int]] = {}
        for delivery in self.c.store.deliveries():
            per = counts.setdefault(delivery.destination, {})
            per[delivery.status.value] = per.get(delivery.status.value, 0) + 1
        paused = self.c.store.paused_destinations()
        names = sorted({*counts, *paused, *([self.c.settings.dicom.destination] if self.c.settings.dicom.destination
                                             else [])})
        return [{"name": name, "counts": counts.get(name, {}), "paused_by": paused[name][0] if name in paused else "",
                 "paused_at": operations.iso(paused[name][1]) if name in paused else ""} for name in names]

    async def destinations(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        rows = await run_in_threadpool(self._destinations)
        return self.render("destinations.html", checked, destinations=rows,
                           message=request.query_params.get("done", ""))

    async def pause_or_resume(self, request: Request) -> Response:
        """Pause a destination (its results queue at the site, none is lost) or resume it."""
        checked = await require(self.c, request, Permission.OPERATE)
        if isinstance(checked, Response):
            return checked
        destination, action = request.path_params["destination"], request.path_params["action"]
        now = time.time()
        if action == "pause":
            changed = await run_in_threadpool(
                lambda: self.c.store.pause_destination(destination, by=actor(checked), now=now))
        elif action == "resume":
            changed = await run_in_threadpool(lambda: self.c.store.resume_destination(
                destination, now=now, give_up_at=now + self.c.settings.delivery.retry_for_s))
        else:
            return PlainTextResponse(f"unknown action {action!r}: pause or resume", status_code=404)
        log.info("console: destination %s %s by %s%s", destination, action, checked.user,
                 "" if changed else " (no change)")
        return RedirectResponse(f"/destinations?done={_query(_pause_outcome(destination, action, changed))}",
                                status_code=303)

    async def cancel(self, request: Request) -> Response:
        """Cancel the study's unfinished or failed work (of one pipeline): nothing more is dispatched or
        delivered (admin.operations.cancel_study)."""
        checked = await require(self.c, request, Permission.OPERATE)
        if isinstance(checked, Response):
            return checked
        key = request.path_params["study_key"]
        form = await request.form()
        pipeline = _text(form.get("pipeline")) or None
        try:
            cancelled = await run_in_threadpool(
                lambda: operations.cancel_study(self.c.store, key, pipeline, actor=actor(checked)))
        except AdminRefused as refused:
            return self.render("message.html", checked, status_code=_STATUS_OF_REFUSAL, title="Not cancelled",
                               message=str(refused))
        done = [row["pipeline"] for row in cancelled if row["cancelled"]]
        log.info("console: study %s: %s cancelled by %s", key, ", ".join(done) or "nothing", checked.user)
        return RedirectResponse(f"/studies/{key}?done={_query('cancelled: ' + (', '.join(done) or 'nothing'))}",
                                status_code=303)

    async def pipelines(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.VIEW)
        if isinstance(checked, Response):
            return checked
        rows = await run_in_threadpool(operations.list_pipelines, self.c.store,
                                       routed_pipelines(self.c.settings.ingest.pipelines))
        return self.render("pipelines.html", checked, pipelines=rows, message=request.query_params.get("done", ""))

    async def pause_or_resume_pipeline(self, request: Request) -> Response:
        """Pause a pipeline (its new studies wait, none is lost) or resume it (they are dispatched)."""
        checked = await require(self.c, request, Permission.OPERATE)
        if isinstance(checked, Response):
            return checked
        pipeline, action = request.path_params["pipeline"], request.path_params["action"]
        try:
            if action == "pause":
                row = await run_in_threadpool(lambda: operations.pause_pipeline(
                    self.c.store, pipeline, known=routed_pipelines(self.c.settings.ingest.pipelines),
                    actor=actor(checked)))
            elif action == "resume":
                row = await run_in_threadpool(lambda: operations.resume_pipeline(self.c.store, pipeline,
                                                                                 actor=actor(checked)))
            else:
                return PlainTextResponse(f"unknown action {action!r}: pause or resume", status_code=404)
        except AdminRefused as refused:
            return self.render("message.html", checked, status_code=_STATUS_OF_REFUSAL, title="Not paused",
                               message=str(refused))
        log.info("console: pipeline %s %s by %s%s", pipeline, action, checked.user, "" if row["changed"] else
                 " (no change)")
        return RedirectResponse(f"/pipelines?done={_query(_pause_outcome(pipeline, action, row['changed']))}",
                                status_code=303)

    async def rerun(self, request: Request) -> Response:
        checked = await require(self.c, request, Permission.OPERATE)
        if isinstance(checked, Response):
            return checked
        key = request.path_params["study_key"]
        form = await request.form()
        pipeline = _text(form.get("pipeline")) or None
        if self.c.rerun_backends is None:
            return self.render("message.html", checked, status_code=503, title="Re-run",
                               message="This console has no message bus to start a re-run on.")

        def run() -> list[dict[str, Any]]:
            assert self.c.rerun_backends is not None
            backends = self.c.rerun_backends()
            return operations.rerun_study(self.c.store, backends.records(), backends.bus(), key, pipeline,
                                          actor=actor(checked))
        try:
            started = await run_in_threadpool(run)
        except AdminRefused as refused:
            return self.render("message.html", checked, status_code=_STATUS_OF_REFUSAL, title="Not re-run",
                               message=str(refused))
        return RedirectResponse(f"/studies/{key}?done={_query(f're-run started: {len(started)} workflow(s)')}",
                                status_code=303)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _pause_outcome(name: str, action: str, changed: bool) -> str:
    """What a pause or resume did, for the page it returns to (a destination or a pipeline)."""
    if changed:
        return f"{name} {'paused' if action == 'pause' else 'resumed'}"
    return f"{name} was {'paused' if action == 'pause' else 'not paused'} already"


def _query(text: str) -> str:
    return quote_plus(text[:200])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["ROUTE_FACTORIES", "Console", "Role", "RouteFactory", "actor", "build_app", "require"]
