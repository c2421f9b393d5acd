"""`conveyor db|projects|keys` run in-process on SQLite and PostgreSQL, schema made by the CLI.

Operators pipe stdout to `jq`, so stdout must be exactly the JSON; mistakes
they can fix must exit 1 with one `error:` line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.cli import main
from conveyor.db import migrate
from conveyor.db.database import Database
from conveyor.db.key_store import grant_for_digest, secret_digest


class Cli:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys
        self.err = ""

    def __call__(self, *argv: str) -> Any:
        """Run a command that must succeed; its stdout parsed as JSON."""
        code = main([*argv, "--database-url", self.url])
        captured = self.capsys.readouterr()
        self.err = captured.err
        assert code == 0, captured.err
        return json.loads(captured.out)

    def fails(self, *argv: str) -> str:
        """Run a command that must be refused; its stderr."""
        code = main([*argv, "--database-url", self.url])
        captured = self.capsys.readouterr()
        assert code == 1
        assert captured.out == ""
        assert captured.err.startswith("error: ") and "Traceback" not in captured.err
        return captured.err


@pytest.fixture
def cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(database_url, capsys)


@pytest.fixture
def upgraded(cli: Cli) -> Cli:
    cli("db", "upgrade")
    return cli


def test_db_upgrade_and_current(cli: Cli) -> None:
    """A fresh database is refused until `db upgrade`, which `db current` then reports."""
    head = migrate.head_revision()
    assert head is not None
    assert "conveyor db upgrade" in cli.fails("projects", "list")
    assert cli("db", "current") == {"current": None, "head": head}
    assert cli("db", "upgrade") == {"current": head, "head": head}
    assert cli("db", "current") == {"current": head, "head": head}
    assert cli("projects", "list") == []
    # Upgrading again is a no-op, not an error.
    assert cli("db", "upgrade") == {"current": head, "head": head}


def test_projects_create_list_archive(upgraded: Cli) -> None:
    cli = upgraded
    acme = cli("projects", "create", "acme")
    globex = cli("projects", "create", "globex")
    assert acme["object"] == "organization.project" and acme["name"] == "acme"
    assert acme["status"] == "active" and acme["archived_at"] is None
    assert "already exists" in cli.fails("projects", "create", "acme")

    assert {p["id"] for p in cli("projects", "list")} == {acme["id"], globex["id"]}
    archived = cli("projects", "archive", "acme")  # by name
    assert archived["id"] == acme["id"] and archived["status"] == "archived"
    assert archived["archived_at"] is not None
    assert [p["id"] for p in cli("projects", "list")] == [globex["id"]]
    everything = cli("projects", "list", "--include-archived")
    assert {p["id"] for p in everything} == {acme["id"], globex["id"]}
    assert cli("projects", "archive", globex["id"])["status"] == "archived"  # by id
    assert "no project" in cli.fails("projects", "archive", "initech")


def test_keys_create_list_revoke(upgraded: Cli) -> None:
    """The secret is printed once, by `keys create`, and it is the one that authenticates."""
    cli = upgraded
    project = cli("projects", "create", "acme")
    made = cli("keys", "create", "--project", "acme", "--rpm", "5", "--name", "ci")
    secret = made["value"]
    assert "shown only now" in cli.err
    assert secret.startswith("sk-proj-")
    assert made["redacted_value"] == f"{secret[:12]}...{secret[-4:]}"
    assert made["project_id"] == project["id"] and made["name"] == "ci"
    assert made["rpm"] == 5 and made["tpm"] is None
    database = Database(cli.url)
    try:
        with database.session() as session:
            grant = grant_for_digest(session, secret_digest(secret))
    finally:
        database.close()
    assert grant is not None and grant.key_id == made["id"] and grant.rpm == 5

    for argv in (("keys", "list"), ("keys", "list", "--project", project["id"])):
        listed = cli(*argv)
        assert [k["id"] for k in listed] == [made["id"]]
        assert "value" not in listed[0]
        assert secret not in json.dumps(listed) and secret[12:-4] not in json.dumps(listed)

    revoked = cli("keys", "revoke", made["id"])
    assert revoked["id"] == made["id"] and revoked["revoked_at"] is not None
    assert "value" not in revoked
    assert cli("keys", "list") == []
    assert [k["id"] for k in cli("keys", "list", "--include-revoked")] == [made["id"]]


def test_keys_errors(upgraded: Cli) -> None:
    cli = upgraded
    cli("projects", "create", "acme")
    assert "no project" in cli.fails("keys", "create", "--project", "initech")
    assert "no project" in cli.fails("keys", "list", "--project", "initech")
    assert "--rpm must be between 1 and" in cli.fails(
        "keys", "create", "--project", "acme", "--rpm", "0"
    )
    assert "no API key" in cli.fails("keys", "revoke", "key_missing")
    cli("projects", "archive", "acme")
    assert "archived" in cli.fails("keys", "create", "--project", "acme")
    assert cli("keys", "list", "--include-revoked") == []
