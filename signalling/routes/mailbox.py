"""GET /me/mailbox and POST /me/mailbox/ack: the mailbox over REST, for scripts and fallbacks.

The WebSocket drains the mailbox by itself; these calls let a client without a socket fetch its
stored envelopes (oldest first) and acknowledge them. Acks go through the hub's group-commit writer,
like socket acks, so both paths share one view of each device's quota.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from signalling.deps import CurrentUser
from signalling.errors import NotFound
from signalling.hub import Hub
from signalling.openapi import errors
from signalling.protocol import DEVICE_ID_PATTERN, ApiErrorCode, MailboxAck, MailboxItem, b64encode
from store import mailbox, reach

router = APIRouter(prefix="/me/mailbox", tags=["mailbox"])


async def _own_device(request: Request, user_id: int, device_id: str) -> None:
    async with request.app.state.engine.connect() as conn:
        owner = await reach.device_owner(conn, device_id)
    if owner is None or owner.user_id != user_id or not owner.active:
        raise NotFound(f"You have no active device {device_id}.", code=ApiErrorCode.UNKNOWN_DEVICE)


@router.get(
    "", response_model=list[MailboxItem], responses=errors(e404="You have no active device with that id.")
)
async def fetch_mailbox(
    request: Request,
    user: CurrentUser,
    device_id: Annotated[str, Query(pattern=DEVICE_ID_PATTERN)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[MailboxItem]:
    """The oldest `limit` envelopes waiting for one of your devices; ack them to get the next ones."""
    await _own_device(request, user.id, device_id)
    async with request.app.state.engine.connect() as conn:
        rows = await mailbox.fetch_after(conn, device_id, 0, limit)
    return [
        MailboxItem(
            message_id=row.message_id,
            sender_user=row.sender_user,
            sender_device=row.sender_device,
            envelope=b64encode(row.envelope),
            queued_at=row.queued_at,
        )
        for row in rows
    ]


@router.post(
    "/ack",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(e404="You have no active device with that id."),
)
async def ack_mailbox(request: Request, user: CurrentUser, body: MailboxAck) -> None:
    """Delete the rows of these messages for this device (unknown ids are ignored: acks repeat)."""
    await _own_device(request, user.id, body.device_id)
    hub: Hub = request.app.state.hub
    await hub.writer.ack(body.device_id, body.message_ids)
