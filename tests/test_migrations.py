"""The database schema across versions: an older database with rows in it is migrated to the
newest revision without losing them, and a newer one is refused in a line, not a traceback."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from service.db import MIGRATIONS, SchemaTooNewError, make_engine, migrate


def _config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def test_a_0002_database_with_rows_is_upgraded_and_keeps_them(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0002")
        connection.execute(text(
            "INSERT INTO jobs (id, owner, request, status, status_reason, attempts, progress, "
            "created_at) VALUES ('j1', '', :request, 'queued', 'submitted', 0, 0.0, :at)"),
            {"request": '{"model": "lenet5"}', "at": "2026-11-01 00:00:00"})  # fmt: skip
        connection.execute(text(
            "INSERT INTO uploads (id, owner, kind, model, filename, size, path, created_at) "
            "VALUES ('u1', '', 'checkpoint', 'lenet5', 'a.pt', 3, '/x', :at)"),
            {"at": "2026-11-01 00:00:00"})  # fmt: skip
    migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert "profile_owners" in tables
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM jobs")).scalars().all() == ["j1"]
        assert connection.execute(text("SELECT id FROM uploads")).scalars().all() == ["u1"]
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "0003")  # fmt: skip
    migrate(engine)  # idempotent


def test_a_database_migrated_by_a_newer_sweetspot_is_refused_in_a_line(tmp_path, capsys):
    """An old worker host restarted after a new one migrated the database: alembic's
    traceback, "Can't locate revision identified by '0004'"."""
    from service.cli import main

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0004'"))
    with pytest.raises(SchemaTooNewError, match=r"revision 0004, newer than this Sweetspot "
                                                r"knows \(up to 0003\): upgrade Sweetspot"):
        migrate(engine)
    code = main(["worker", "--once", "--data-dir", str(tmp_path), "--database-url", url])
    err = capsys.readouterr().err
    assert code == 1 and "sweetspot: the database's schema is at revision 0004" in err
    assert "Traceback" not in err
