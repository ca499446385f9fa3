"""The REST API, one module per resource; `routes()` collects them."""

from aiohttp import web

from controller.api import (
    approvals,
    broadcasts,
    county,
    device_control,
    devices,
    docs,
    enrolment,
    groups,
    live,
    media,
    preview,
    pronunciations,
    records,
    schedules,
    session,
    stats,
    system,
    templates,
    township_languages,
    updates,
    uploads,
    users,
    workorders,
)


def routes() -> list[web.RouteDef]:
    return [
        *broadcasts.routes,
        *county.routes,
        *devices.routes,
        *enrolment.routes,
        *media.routes,
        *system.routes,
        *session.routes,
        *users.routes,
        *live.routes,
        *records.routes,
        *approvals.routes,
        *groups.routes,
        *device_control.routes,
        *templates.routes,
        *township_languages.routes,
        *preview.routes,
        *uploads.routes,
        *schedules.routes,
        *pronunciations.routes,
        *docs.routes,
        *stats.routes,
        *workorders.routes,
        *updates.routes,
    ]
