"""Schema migrations (Alembic). Other layers add their own version folders."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ENGINE_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str, extra_version_locations: list[Path] | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ENGINE_MIGRATIONS))
    locations = [ENGINE_MIGRATIONS / "versions", *(extra_version_locations or [])]
    config.set_main_option("version_locations", " ".join(str(p) for p in locations))
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, extra_version_locations: list[Path] | None = None) -> None:
    command.upgrade(alembic_config(url, extra_version_locations), "heads")
