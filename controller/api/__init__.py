"""The REST API, one module per resource; `routes()` collects them."""

from aiohttp import web

from controller.api import (
    approvals,
    broadcasts,
    clips,
    county,
    device_control,
    devices,
    docs,
    groups,
    live,
    live_paging,
    media,
    phone,
    preview,
    pronunciations,
    records,
    schedules,
    session,
    stats,
    system,
    templates,
    township_languages,
    uploads,
    users,
    workorders,
)


def routes() -> list[web.RouteDef]:
    return [
        *broadcasts.routes,
        *county.routes,
        *devices.routes,
        *media.routes,
        *system.routes,
        *session.routes,
        *users.routes,
        *live.routes,
        *live_paging.routes,
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
        *phone.routes,
        *clips.routes,
    ]
