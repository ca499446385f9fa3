"""The REST API, one module per resource; `routes()` collects them."""

from aiohttp import web

from controller.api import broadcasts, county, devices, media, system


def routes() -> list[web.RouteDef]:
    return [*broadcasts.routes, *county.routes, *devices.routes, *media.routes, *system.routes]
