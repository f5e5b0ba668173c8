"""Server settings: one pydantic-settings model, read from `PEERPOST_*` environment variables.

Every knob a deployment or a test may turn lives here, with a default that is safe for a single
machine on SQLite. Secrets have no defaults in code: the JWT secret is generated on first start and
kept in the data directory (see `signalling.tokens`), and TURN credentials exist only when
`turn_secret` is set.

List settings accept JSON (`["stun:a", "stun:b"]`) or a comma-separated string (`stun:a,stun:b`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

UrlList = Annotated[list[str], NoDecode]


def _split_urls(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEERPOST_", extra="ignore")

    # --- process -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default sqlite+aiosqlite:///<data_dir>/peerpost.db"
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        default="FULL",
        description="FULL survives power loss; NORMAL (in WAL mode) survives a killed process only",
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="proxies whose X-Forwarded-For is trusted for the client address; none by default",
    )
    log_level: str = "info"

    # --- connections and bodies (signalling.http_limits, docs/server.md "Behind a proxy") -------
    http_header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request's headers must be complete within this"
    )
    http_body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a request body may pause at most this long between chunks"
    )
    http_keepalive_timeout_seconds: float = Field(default=5.0, gt=0, description="idle keep-alive connection")
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="request line + headers")
    max_connections: int = Field(
        default=4096, gt=0, description="open connections (sockets included); more get 503"
    )
    max_connections_per_address: int = Field(
        default=256, gt=0, description="open HTTP connections from one client address; more get 503"
    )
    body_max_bytes: int = Field(default=1024 * 1024, gt=0, description="a JSON or form body")
    body_max_bytes_unauthenticated: int = Field(
        default=16 * 1024, gt=0, description="a body on register, login and refresh"
    )
    metrics_enabled: bool = Field(default=False, description="serve /metrics (counts only; keep it private)")
    docs_enabled: bool = Field(default=True, description="serve /docs and /redoc (assets are local)")

    # --- accounts and tokens -------------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 key; when unset, generated once and kept in <data_dir>/jwt-secret"
    )
    access_token_ttl_seconds: int = Field(default=15 * 60, gt=0)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16, description="tests lower it; production keeps 12")
    bcrypt_concurrency: int | None = Field(
        default=None, ge=1, description="hashes at once; default one less than the CPU count (at least 1)"
    )
    login_attempts_per_username: int = Field(default=10, gt=0)
    login_attempts_per_address: int = Field(default=30, gt=0)
    login_window_seconds: float = Field(default=60.0, gt=0)
    login_failures_per_account: int = Field(
        default=50, gt=0, description="failures for one name from all addresses before answers slow down"
    )
    login_backoff_max_seconds: float = Field(default=4.0, ge=0, description="the slowest a login is made")
    registrations_per_address: int = Field(default=10, gt=0, description="per registration window")
    registrations_global: int = Field(default=120, gt=0, description="per registration window, all addresses")
    registration_window_seconds: float = Field(default=600.0, gt=0)
    password_queue: int = Field(
        default=16, ge=0, description="hashes that may wait for a worker before new ones are refused (503)"
    )
    contact_decline_cooldown_seconds: float = Field(
        default=7 * 24 * 3600.0, ge=0, description="a declined asker may not ask again before this"
    )
    max_devices_per_user: int = Field(default=16, gt=0)
    max_one_time_prekeys: int = Field(default=200, gt=0, description="per device and kind (curve, ML-KEM)")
    prekey_claims_per_device: int = Field(
        default=32,
        gt=0,
        description="claims of one device's one-time prekeys by one other user per claim window; past "
        "it the claim is answered with the signed and last-resort keys only",
    )
    prekey_claim_window_seconds: float = Field(default=24 * 3600.0, gt=0)

    # --- mailbox, frames, presence (used by the hub) -------------------------------------------
    mailbox_retention_days: int = Field(default=30, gt=0)
    mailbox_quota_messages: int = Field(default=10_000, gt=0, description="stored envelopes per device")
    mailbox_quota_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="stored bytes per device")
    mailbox_sender_share: float = Field(
        default=0.25, gt=0, le=1, description="part of a device's mailbox quota one other sender may fill"
    )
    account_quota_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="mailbox envelopes an account sent and still stored, plus its blobs",
    )
    disk_min_free_bytes: int = Field(
        default=512 * 1024 * 1024, ge=0, description="below this much free space, new writes are refused"
    )
    outbox_max_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="frames queued for one socket that is not reading"
    )
    outbox_max_bytes_per_account: int = Field(
        default=32 * 1024 * 1024, gt=0, description="frames queued for all sockets of one account"
    )
    max_frame_bytes: int = Field(default=1024 * 1024, gt=0)
    ws_rate_per_second: float = Field(default=200.0, gt=0, description="sustained client frames per second")
    ws_rate_burst: int = Field(default=400, gt=0)
    ws_ping_interval_seconds: float = Field(
        default=20.0, gt=0, description="WebSocket keepalive ping per socket; unanswered for as long: 1011"
    )
    presence_grace_seconds: float = Field(default=5.0, ge=0)
    live_hold_seconds: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="how long an envelope every recipient got live waits for their acks before it is "
        "stored (docs/hub.md, live holds); 0 stores every envelope at once",
    )
    reach_warm_limit: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="when a device connects, the permission answers for up to this many devices it "
        "may send to are read in one query in the background (docs/hub.md); 0 turns it off",
    )
    backplane_url: str | None = Field(default=None, description="redis://... for several instances")
    backplane_prefix: str = Field(
        default="peerpost", description="Redis key and channel prefix; instances of one cluster share it"
    )
    backplane_ttl_seconds: float = Field(
        default=30.0, gt=0, description="a dead instance's devices count as online for at most this long"
    )
    mailbox_purge_interval_seconds: float = Field(default=300.0, gt=0)

    # --- groups ----------------------------------------------------------------------------------
    group_max_members: int = Field(default=1000, gt=1, le=100_000, description="members of one group")
    groups_per_user: int = Field(default=500, gt=0, description="groups one user may be a member of")

    # --- ICE servers handed to peers -----------------------------------------------------------
    ice_servers: UrlList = Field(default_factory=list, description="extra ICE urls handed on as they are")
    stun_urls: UrlList = Field(default_factory=list)
    turn_urls: UrlList = Field(default_factory=list)
    turn_secret: SecretStr | None = Field(default=None, description="coturn static-auth-secret")
    turn_ttl_seconds: int = Field(default=24 * 3600, gt=0)

    # --- blobs (encrypted file fallback, used by the hub) --------------------------------------
    blob_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    blob_quota_bytes_per_user: int = Field(default=1024 * 1024 * 1024, gt=0)
    blob_retention_days: int = Field(default=30, gt=0)

    _urls = field_validator("ice_servers", "stun_urls", "turn_urls", mode="before")(_split_urls)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'peerpost.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
