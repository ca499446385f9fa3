"""Every controller setting, in one place. Environment variables `DALABA_*` or a
`.env`-style file override the defaults; `config/dalaba.example.env` lists them all."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DALABA_", extra="ignore")

    data_dir: Path = Path("./data")
    # sqlite:///... (embedded default) or postgresql+psycopg://user@host/db (scale-out)
    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The URL terminals use to fetch media; defaults to http://<http_host>:<http_port>/media/
    public_media_url: str | None = None
    broker_url: str = "mqtt://127.0.0.1:1883"
    broker_username: str = "dalaba-controller"
    broker_password: SecretStr = SecretStr("")
    # Demo mode allows generated/placeholder secrets and prints credentials.
    demo: bool = False

    # Terminals start this long after the command is published, so they all start
    # together; more when the audio is new and every terminal must fetch it first.
    sync_lead_ms: int = Field(default=600, ge=100, le=10_000)
    fetch_lead_ms: int = Field(default=900, ge=0, le=60_000)
    default_expiry_s: dict[str, int] = {
        "emergency": 3600,
        "notice": 6 * 3600,
        "routine": 3600,
    }
    max_text_chars: int = 2000
    # Speech: backends tried in this order; edge-tts needs the internet.
    speech_backends: tuple[str, ...] = ("edge-tts", "espeak-ng")
    edge_tts_timeout_s: float = 3.0
    ingest_batch_ms: int = 50
    telemetry_history_interval_s: int = 300

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if not self.demo and self.broker_password.get_secret_value() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "broker_password: set DALABA_BROKER_PASSWORD (placeholder secrets are only "
                "allowed with DALABA_DEMO=true)"
            )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dalaba.db'}"

    @property
    def media_url(self) -> str:
        return self.public_media_url or f"http://{self.http_host}:{self.http_port}/media/"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "controller-ed25519.pem"
