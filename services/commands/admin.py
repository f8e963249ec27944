"""``autopaint admin``: API keys and database migrations (settings from ``AUTOPAINT_*``)."""

from __future__ import annotations

import typer

admin = typer.Typer(help="Service administration: API keys, database migrations.", no_args_is_help=True)


@admin.command("migrate")
def migrate(revision: str = typer.Option("head", help="Alembic revision to upgrade to")) -> None:
    """Create or upgrade the database schema (alembic upgrade)."""
    from autopaint.db.migrate import upgrade
    from autopaint.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    upgrade(settings.database_url, revision)
    print(f"database at revision {revision}")


@admin.command("create-key")
def create_key(name: str = typer.Option(..., "--name", help="who or what uses the key")) -> None:
    """Create an API key; the key is printed once (only its sha256 is stored)."""
    from autopaint.db import make_engine, make_session_factory
    from autopaint.settings import Settings
    from services.api.auth import create_api_key

    engine = make_engine(Settings().database_url)
    try:
        with make_session_factory(engine)() as session:
            row, token = create_api_key(session, name)
    finally:
        engine.dispose()
    print(token)
    typer.echo(f"created key {row.prefix}... (id {row.id}) for {name!r}; it will not be shown again", err=True)
    typer.echo(f"callback signing secret: {row.callback_secret} (the key reads it: GET /v1/callback-secret)",
               err=True)


@admin.command("revoke-key")
def revoke_key(key: str = typer.Argument(..., help="key id or its shown prefix")) -> None:
    """Revoke an API key."""
    from autopaint.db import make_engine, make_session_factory
    from autopaint.settings import Settings
    from services.api.auth import revoke_api_key

    engine = make_engine(Settings().database_url)
    try:
        with make_session_factory(engine)() as session:
            n = revoke_api_key(session, key)
    finally:
        engine.dispose()
    print(f"revoked {n} key(s)")
    if n == 0:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach ``autopaint admin ...``."""
    app.add_typer(admin, name="admin")
