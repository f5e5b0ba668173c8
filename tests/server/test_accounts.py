"""Registration, your own account (read, change, delete), and finding other users."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from signalling.protocol import CloseCode
from store.models import Contact, Device, MailboxEntry, RefreshToken, User, utcnow
from tests.server.conftest import CLIENT_ADDRESS, PASSWORD, Account, NewAccount, login, register


async def _user_row(app: FastAPI, user_id: int) -> User | None:
    async with app.state.sessions() as session:
        return await session.get(User, user_id)


# ------------------------------------------------------------------------------ registration


async def test_register_returns_201_with_public_fields_and_records_client_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    response = await register(client, "alice", email="Alice@Example.org")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "username", "email", "created_at"}
    assert body["username"] == "alice"
    assert body["email"] == "alice@example.org"
    row = await _user_row(app, body["id"])
    assert row is not None
    assert (row.last_address, row.last_port) == CLIENT_ADDRESS
    assert row.password_hash.startswith(b"$2b$04$")
    assert PASSWORD.encode() not in row.password_hash


async def test_register_taken_username_is_409_regardless_of_case(client: httpx.AsyncClient) -> None:
    assert (await register(client, "alice")).status_code == 201
    for name in ("alice", "ALICE"):
        response = await register(client, name, email=f"other-{name}@example.org")
        assert response.status_code == 409
        assert response.json() == {
            "detail": f"The username '{name}' is already taken.",
            "code": "username_taken",
        }


async def test_register_taken_email_is_409(client: httpx.AsyncClient) -> None:
    assert (await register(client, "alice", email="a@example.org")).status_code == 201
    response = await register(client, "alice2", email="A@EXAMPLE.org")
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert "e-mail" in response.json()["detail"]


async def test_register_bad_username_is_422_saying_what_is_allowed(client: httpx.AsyncClient) -> None:
    for bad in ("ab", "with space", "x" * 33, "émile"):
        response = await register(client, bad, email="e@example.org")
        assert response.status_code == 422, bad
        body = response.json()
        assert body["code"] == "invalid"
        assert "username: must be 3 to 32 characters" in body["detail"]


async def test_register_bad_email_is_422(client: httpx.AsyncClient) -> None:
    response = await register(client, "alice", email="not-an-email")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("Invalid request: email:")


async def test_register_password_outside_8_to_128_characters_is_422_naming_it(
    client: httpx.AsyncClient,
) -> None:
    too_short = await register(client, "alice", password="1234567")
    assert too_short.status_code == 422
    assert too_short.json()["field"] == "password"
    assert "password: String should have at least 8 characters" in too_short.json()["detail"]
    too_long = await register(client, "alice", password="x" * 129)
    assert too_long.status_code == 422 and too_long.json()["field"] == "password"
    eight_characters = await register(client, "alice", password="éééééééé")
    assert eight_characters.status_code == 201


async def test_a_password_past_bcrypts_72_bytes_counts_to_its_last_byte(client: httpx.AsyncClient) -> None:
    """bcrypt reads 72 bytes; the server pre-hashes longer passwords, so none is cut short."""
    long_password = "é" * 50 + "tail"  # 104 bytes in UTF-8
    assert (await register(client, "alice", password=long_password)).status_code == 201
    assert (await login(client, "alice", long_password)).status_code == 200
    assert (await login(client, "alice", "é" * 50)).status_code == 401
    assert (await login(client, "alice", "é" * 50 + "tale")).status_code == 401


async def test_register_missing_field_names_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/users/", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: email: is required."


# ------------------------------------------------------------------------------ /users/me


async def test_read_me_shows_own_account(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.get("/users/me", headers=alice.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == alice.id
    assert body["email"] == "alice@example.org"
    assert body["last_seen"] is not None  # set by the login


async def test_read_me_without_token_is_401_with_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


async def test_change_email(client: httpx.AsyncClient, alice: Account) -> None:
    without = await client.patch("/users/me", json={"email": "new@example.org"}, headers=alice.headers)
    assert without.status_code == 403
    assert without.json()["code"] == "current_password_required"
    response = await client.patch(
        "/users/me",
        json={"email": "new@example.org", "current_password": alice.password},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert response.json()["email"] == "new@example.org"
    assert response.json()["updated_at"] is not None
    assert (await client.get("/users/me", headers=alice.headers)).json()["email"] == "new@example.org"


async def test_change_email_to_a_taken_one_is_409(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    response = await client.patch(
        "/users/me", json={"email": bob.email, "current_password": alice.password}, headers=alice.headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert (await client.get("/users/me", headers=alice.headers)).json()["email"] == alice.email


async def test_change_password_needs_the_current_password(client: httpx.AsyncClient, alice: Account) -> None:
    missing = await client.patch("/users/me", json={"password": "new password 1"}, headers=alice.headers)
    assert missing.status_code == 403
    assert missing.json()["code"] == "current_password_required"
    wrong = await client.patch(
        "/users/me",
        json={"password": "new password 1", "current_password": "wrong guess"},
        headers=alice.headers,
    )
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "The current password is wrong.", "code": "wrong_password"}
    assert (await login(client, "alice", PASSWORD)).status_code == 200


async def test_change_password_with_a_bad_new_password_is_422(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.patch(
        "/users/me", json={"password": "short", "current_password": PASSWORD}, headers=alice.headers
    )
    assert response.status_code == 422
    assert response.json()["field"] == "password"
    assert "at least 8 characters" in response.json()["detail"]


async def test_change_password_signs_out_everywhere(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.patch(
        "/users/me",
        json={"password": "brand new secret", "current_password": PASSWORD},
        headers=alice.headers,
    )
    assert response.status_code == 200
    old_token = await client.get("/users/me", headers=alice.headers)
    assert old_token.status_code == 401
    assert old_token.json()["code"] == "token_revoked"
    old_refresh = await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
    assert old_refresh.status_code == 401
    assert app.state.hub.users == [(alice.id, CloseCode.UNAUTHORIZED, "password changed")]
    assert (await login(client, "alice", PASSWORD)).status_code == 401
    assert (await login(client, "alice", "brand new secret")).status_code == 200


async def test_patch_with_unknown_field_is_422(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.patch("/users/me", json={"username": "mallory"}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: username: is not a known field."


# ------------------------------------------------------------------------------ DELETE /users/self


async def test_delete_self_removes_everything_and_closes_sockets(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account, carol: Account
) -> None:
    # alice <-> bob accepted, carol -> alice pending, a device, and mailbox rows both ways
    assert (
        await client.post("/me/contacts/", json={"friend_id": bob.id}, headers=alice.headers)
    ).status_code == 201
    assert (await client.post(f"/me/contacts/{alice.id}/accept", headers=bob.headers)).status_code == 200
    assert (
        await client.post("/me/contacts/", json={"friend_id": alice.id}, headers=carol.headers)
    ).status_code == 201
    async with app.state.sessions() as session:
        session.add(
            Device(
                user_id=alice.id,
                device_id="alice-laptop",
                identity_key=b"k" * 32,
                encryption_key=b"e" * 500,
                signature=b"s" * 64,
                signed_at=1,
            )
        )
        now = utcnow()
        for recipient, rdev, sender, sdev, mid in (
            (alice.id, "alice-laptop", bob.id, "bob-phone1", "a" * 32),
            (bob.id, "bob-phone1", alice.id, "alice-laptop", "b" * 32),
        ):
            session.add(
                MailboxEntry(
                    recipient_user=recipient,
                    recipient_device=rdev,
                    sender_user=sender,
                    sender_device=sdev,
                    message_id=mid,
                    envelope=b"ciphertext",
                    size=10,
                    expires_at=now,
                )
            )
        await session.commit()

    response = await client.delete("/users/self", headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert app.state.hub.users == [(alice.id, CloseCode.ACCOUNT_GONE, "account deleted")]

    async with app.state.sessions() as session:
        assert await session.get(User, alice.id) is None
        for model, column in (
            (Device, Device.user_id),
            (Contact, Contact.owner_id),
            (Contact, Contact.friend_id),
            (RefreshToken, RefreshToken.user_id),
            (MailboxEntry, MailboxEntry.recipient_user),
            (MailboxEntry, MailboxEntry.sender_user),
        ):
            count = await session.scalar(select(func.count()).select_from(model).where(column == alice.id))
            assert count == 0, (model.__tablename__, column)
        assert await session.get(User, bob.id) is not None

    gone = await client.get("/users/me", headers=alice.headers)
    assert gone.status_code == 401
    assert gone.json()["code"] == "account_gone"
    assert (await login(client, "alice")).status_code == 401
    assert (await client.get("/me/contacts/", headers=bob.headers)).json() == []
    assert (await client.get("/me/contacts/requests/outgoing", headers=carol.headers)).json() == []
    assert (await register(client, "alice")).status_code == 201  # the name is free again


async def test_delete_self_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.delete("/users/self")).status_code == 401


# ------------------------------------------------------------------------------ search and profiles


async def test_search_by_prefix_any_case_without_yourself(
    client: httpx.AsyncClient, new_account: NewAccount
) -> None:
    me = await new_account("ann")
    for name in ("Anna", "annie", "bob", "andre"):
        await new_account(name)
    response = await client.get("/users/search", params={"q": "AN"}, headers=me.headers)
    assert response.status_code == 200
    assert [u["username"] for u in response.json()] == ["andre", "Anna", "annie"]
    assert set(response.json()[0]) == {"id", "username"}


async def test_search_pages(client: httpx.AsyncClient, new_account: NewAccount) -> None:
    me = await new_account("zed")
    for i in range(5):
        await new_account(f"user{i}")
    page1 = (await client.get("/users/search", params={"q": "user", "limit": 2}, headers=me.headers)).json()
    page2 = (
        await client.get("/users/search", params={"q": "user", "skip": 2, "limit": 2}, headers=me.headers)
    ).json()
    page3 = (
        await client.get("/users/search", params={"q": "user", "skip": 4, "limit": 2}, headers=me.headers)
    ).json()
    assert [u["username"] for u in page1 + page2 + page3] == [f"user{i}" for i in range(5)]


async def test_search_treats_like_wildcards_literally(
    client: httpx.AsyncClient, new_account: NewAccount
) -> None:
    me = await new_account("zed")
    await new_account("a_b")
    await new_account("axb")
    found = (await client.get("/users/search", params={"q": "a_"}, headers=me.headers)).json()
    assert [u["username"] for u in found] == ["a_b"]
    assert (await client.get("/users/search", params={"q": "%"}, headers=me.headers)).json() == []


async def test_search_needs_q_and_sane_paging(client: httpx.AsyncClient, alice: Account) -> None:
    assert (await client.get("/users/search", headers=alice.headers)).status_code == 422
    bad_limit = await client.get("/users/search", params={"q": "a", "limit": 500}, headers=alice.headers)
    assert bad_limit.status_code == 422
    assert "limit" in bad_limit.json()["detail"]
    assert (
        await client.get("/users/search", params={"q": "a", "skip": -1}, headers=alice.headers)
    ).status_code == 422
    assert (await client.get("/users/search", params={"q": "a"})).status_code == 401


async def test_read_another_user(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    response = await client.get(f"/users/{bob.id}", headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == {"id": bob.id, "username": "bob"}
    missing = await client.get("/users/9999", headers=alice.headers)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "There is no user with id 9999.", "code": "user_not_found"}


async def test_a_deleted_accounts_id_and_tokens_never_pass_to_a_new_account(
    client: httpx.AsyncClient, new_account: NewAccount
) -> None:
    last = await new_account("zoe")  # the highest id: SQLite would hand it out again without AUTOINCREMENT
    assert (await client.delete("/users/self", headers=last.headers)).status_code == 204
    newcomer = await new_account("mallory")
    assert newcomer.id != last.id
    stale = await client.get("/users/me", headers=last.headers)
    assert stale.status_code == 401
    assert stale.json()["code"] == "account_gone"
