"""The running controller, wired in one place.

Constructors below only store their dependencies; `_lifecycle` (the aiohttp
application's cleanup context) starts everything in order and stops it in reverse. A
reader finds the whole running system in this file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from controller import pronunciations
from controller.api import ebd as ebd_api
from controller.api import enrolment as enrolment_api
from controller.api import keys, routes
from controller.api import live_paging as live_paging_api
from controller.api import updates as updates_api
from controller.api import workorders as workorders_api
from controller.api.docs import public_docs_middleware
from controller.auth import TokenAuthenticator, auth_middleware
from controller.broadcasts import BroadcastService
from controller.db import Database, is_memory_url
from controller.dispatch import Dispatcher
from controller.enrolment import BrokerAccounts, EnrolmentService
from controller.errors import error_middleware
from controller.events import EventHub
from controller.http_security import path_id_guard, security_headers
from controller.idempotency import IdempotencyStore, idempotency_middleware
from controller.ingest import Ingestor
from controller.live import LiveHub
from controller.media import MediaStore
from controller.metrics import Metrics
from controller.paging_live import LivePagingService
from controller.prepositioning import Prepositioner
from controller.replicas import EventRelay, Leadership, SqliteOwner
from controller.retention import RetentionJob
from controller.schedules.service import ScheduleService
from controller.sessions import SessionStore
from controller.settings import Settings
from controller.speech import AnnouncementRenderer
from controller.speech.service import standard_backends
from controller.templates import seed_builtin_templates
from controller.updates import UpdateService
from controller.upstream.service import UpstreamLink
from controller.warnings.intake import IntakeContext
from controller.workorders import WorkOrderService
from dalaba.signing import load_or_create_signer

log = logging.getLogger(__name__)


def find_web_dir() -> Path:
    """The console's files: inside the package in an installed wheel (setup.py ships web/
    as controller/web), else web/ beside the packages in a checkout or editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "web", here.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    return here.parent / "web"


WEB_DIR = find_web_dir()
MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def build_app(settings: Settings, broker_accounts: BrokerAccounts | None = None) -> web.Application:
    """`broker_accounts`: how this controller changes the broker's accounts (enrolment,
    revocation); None where it does not manage them (terminals provisioned by file)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url, auto_migrate=settings.auto_migrate)
    media = MediaStore(settings.media_dir, db)
    renderer = AnnouncementRenderer(
        cache_dir=settings.data_dir / "speech-cache",
        backend_order=settings.speech_backends,
        backends=standard_backends(
            settings.speech_backends,
            data_dir=settings.data_dir,
            edge_timeout_s=settings.edge_tts_timeout_s,
        ),
        edge_timeout_s=settings.edge_tts_timeout_s,
        dictionary=pronunciations.effective(
            pronunciations.load_custom(settings.data_dir / "pronunciations.json")
        ),
    )
    signer = load_or_create_signer(settings.signing_scheme, settings.signing_key_path)
    # Services tell each other what happened through typed events on this one hub.
    events = EventHub()
    ingestor = Ingestor(
        db,
        events,
        batch_ms=settings.ingest_batch_ms,
        history_interval_s=settings.telemetry_history_interval_s,
        liveness_intervals=settings.liveness_intervals,
        default_telemetry_interval_s=settings.default_telemetry_interval_s,
    )
    # PostgreSQL: this process may be one of several replicas (controller/replicas.py).
    replicated = not db.is_sqlite
    replica = settings.replica_name
    dispatcher = Dispatcher(
        settings.broker_address(),
        signer,
        ingestor.submit,
        shared_ingest=replicated and settings.shared_ingest,
    )
    broadcasts = BroadcastService(db, media, renderer, dispatcher, settings, events)
    prepositioner = Prepositioner(db, broadcasts, dispatcher, settings)
    prepositioner.listen(events)  # stages the audio of requests waiting for approval
    sessions = SessionStore(db, settings)
    live = LiveHub(db, events)  # subscribes when started
    schedules = ScheduleService(db, broadcasts, dispatcher, settings)
    schedules.listen(events)
    relay = EventRelay(settings.db_url, replica, events) if replicated else None
    sqlite_owner = None if replicated or is_memory_url(db.url) else SqliteOwner(db.file_path())
    metrics = Metrics(db, ingestor, dispatcher, events)
    idempotency = IdempotencyStore(db)
    retention = RetentionJob.from_settings(db, settings)  # daily, when started
    workorders = WorkOrderService(db, settings)  # sweeps when started
    workorders.listen(events)
    updates = UpdateService(db, media, dispatcher)  # waves move on when started
    live_paging = LivePagingService(db, media, dispatcher, settings, events)

    # The singletons: on exactly one replica at a time, the leader.
    async def start_leader_jobs() -> None:
        ingestor.start_liveness()
        await broadcasts.start()
        await schedules.start()
        await retention.start()
        await workorders.start()
        await updates.start()  # rollout waves move on from one place
        await upstream.start_reports()

    async def stop_leader_jobs() -> None:
        await upstream.stop_reports()
        await updates.stop()
        await retention.stop()
        await workorders.stop()
        await schedules.stop()
        await broadcasts.stop()
        await ingestor.stop_liveness()

    leadership = Leadership(
        settings.db_url if replicated else None, replica, start_leader_jobs, stop_leader_jobs
    )

    app = web.Application(
        middlewares=[
            error_middleware,
            path_id_guard,
            public_docs_middleware,
            auth_middleware(TokenAuthenticator(db), sessions),
            idempotency_middleware(idempotency),
        ],
        client_max_size=MAX_UPLOAD_BYTES,
    )
    app[keys.SETTINGS] = settings
    app[keys.DB] = db
    app[keys.MEDIA] = media
    app[keys.RENDERER] = renderer
    app[keys.INGESTOR] = ingestor
    app[keys.DISPATCHER] = dispatcher
    app[keys.BROADCASTS] = broadcasts
    app[keys.PREPOSITIONER] = prepositioner
    app[keys.SESSIONS] = sessions
    app[keys.LIVE] = live
    app[keys.SCHEDULES] = schedules
    app[keys.EVENTS] = events
    app[keys.LEADERSHIP] = leadership
    app[workorders_api.SERVICE] = workorders
    # The upper-level platform's link hands EBMs to the one warning intake.
    upstream = UpstreamLink.from_settings(settings, lambda: IntakeContext.from_app(app), media)
    app[ebd_api.LINK] = upstream
    app[enrolment_api.SERVICE] = EnrolmentService(db, sessions, broker_accounts)
    app[enrolment_api.TRUST_PEMS] = [signer.trust_pem().decode()]
    app[updates_api.SERVICE] = updates
    app[live_paging_api.SERVICE] = live_paging
    app.add_routes(routes())
    # Prometheus scrapes /metrics by convention; counts only, no login (controller.metrics).
    app.router.add_get("/metrics", metrics.handle)
    if WEB_DIR.is_dir():
        app.router.add_get("/", _index)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
    else:
        log.warning("no console files at %s: serving the API only", WEB_DIR)

    async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
        if sqlite_owner is not None:
            sqlite_owner.acquire()  # before anything: a second controller stops here
        try:
            db.start()
            try:
                await db.run(seed_builtin_templates)
            except IntegrityError:
                # Another replica seeded the same built-ins at the same instant (seen
                # in tests/integration/test_replicas.py): theirs stand; add what is left.
                await db.run(seed_builtin_templates)
            await live.start()
            if relay is not None:
                await relay.start()
            await ingestor.start()
            await dispatcher.start()
            await upstream.start()
            await leadership.start()
            log.info(
                "controller %s up: http://%s:%d/", replica, settings.http_host, settings.http_port
            )
            yield
            await leadership.stop()
            await live_paging.close()
            await upstream.stop()
            await dispatcher.stop()
            await ingestor.stop()
            if relay is not None:
                await relay.stop()
            db.stop()
        finally:
            if sqlite_owner is not None:
                sqlite_owner.release()

    app.on_response_prepare.append(security_headers(https=settings.cookie_secure))
    app.cleanup_ctx.append(_lifecycle)
    # Event streams never end by themselves: close them before the server waits on them.
    app.on_shutdown.append(live.close)
    return app


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


class ControllerServer:
    """The controller as an HTTP server that can be started and stopped in-process
    (by `dalaba controller`, the demo and the tests)."""

    def __init__(self, settings: Settings, broker_accounts: BrokerAccounts | None = None) -> None:
        self.settings = settings
        self.broker_accounts = broker_accounts
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.app = build_app(self.settings, self.broker_accounts)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"


async def serve_forever(settings: Settings, broker_accounts: BrokerAccounts | None = None) -> None:
    """Run until SIGTERM (systemd's stop) or SIGINT, then shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = ControllerServer(settings, broker_accounts)
    await server.start()
    try:
        await stop.wait()
        log.info("controller stopping")
    finally:
        await server.stop()
