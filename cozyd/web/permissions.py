"""``/permissions``: what the caller may do."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from cozyd.web.common import JSONAPI, json_response, jsonapi_errors
from cozyd.web.guard import Guard
from cozyd.web.routing import Service, route, token


class PermissionsService(Service):
    errors = jsonapi_errors

    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    @route("self", "GET", auth=token())
    async def show_self(self, request: IRequest):
        permissions = await self.guard.permissions(request)
        return json_response(
            request,
            {
                "data": {
                    "type": "io.cozy.permissions",
                    "id": permissions.id or permissions.source_id or permissions.subject,
                    "attributes": {
                        "type": permissions.type,
                        "source_id": permissions.source_id,
                        "permissions": permissions.permissions_json(),
                    },
                    "meta": {},
                }
            },
            content_type=JSONAPI,
        )
