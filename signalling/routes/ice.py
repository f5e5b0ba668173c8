"""GET /ice: the ICE servers a logged-in peer should use, with time-limited TURN credentials.

TURN REST credentials (coturn `use-auth-secret`): username `"<unix expiry>:<user id>"`, credential
`base64(HMAC-SHA1(turn_secret, username))`. Without `turn_secret` no TURN entry is handed out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from fastapi import APIRouter, Request

from signalling.deps import CurrentUser
from signalling.protocol import IceConfig, IceServer
from signalling.settings import Settings

router = APIRouter(tags=["ice"])


def turn_credentials(secret: str, user_id: int, ttl: int, now: float | None = None) -> tuple[str, str]:
    expiry = int(now if now is not None else time.time()) + ttl
    username = f"{expiry}:{user_id}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_config(settings: Settings, user_id: int, now: float | None = None) -> IceConfig:
    servers: list[IceServer] = []
    plain = [*settings.stun_urls, *settings.ice_servers]
    if plain:
        servers.append(IceServer(urls=plain))
    if settings.turn_urls and settings.turn_secret is not None:
        username, credential = turn_credentials(
            settings.turn_secret.get_secret_value(), user_id, settings.turn_ttl_seconds, now
        )
        servers.append(IceServer(urls=list(settings.turn_urls), username=username, credential=credential))
    return IceConfig(ice_servers=servers, ttl=settings.turn_ttl_seconds)


@router.get("/ice", response_model=IceConfig, summary="ICE servers and TURN credentials for this user")
async def get_ice(user: CurrentUser, request: Request) -> IceConfig:
    return ice_config(request.app.state.settings, user.id)
