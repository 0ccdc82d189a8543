"""``/permissions``: what the caller may do."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from cozyd.web.common import JSONAPI, install_error_handlers, json_response
from cozyd.web.guard import Guard, requires


class PermissionsService:
    app = Klein()
    install_error_handlers(app)

    def __init__(self, guard: Guard):
        self.guard = guard

    def resource(self):
        return self.app.resource()

    @app.route("/self", methods=["GET", "HEAD"])
    @requires()
    async def show_self(self, request: IRequest):
        permissions = await self.guard.permissions(request)
        return json_response(request, {"data": {
            "type": "io.cozy.permissions",
            "id": permissions.id or permissions.source_id or permissions.subject,
            "attributes": {"type": permissions.type, "source_id": permissions.source_id,
                           "permissions": permissions.permissions_json()},
            "meta": {},
        }}, content_type=JSONAPI)
