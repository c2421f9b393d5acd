"""`conveyor db|projects|keys` run in-process on SQLite and PostgreSQL, schema made by the CLI.

Operators pipe stdout to `jq`, so stdout must be exactly the JSON; mistakes
they can fix must exit 1 with one `error:` line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.cli import main
from conveyor.db import migrate
from conveyor.db.database import Database
from conveyor.db.key_store import grant_for_digest, secret_digest
from conveyor.db.project_store import create_project
from conveyor.db.request_log import RequestLog
from conveyor.db.request_log_lookup import find_request_logs

from ..postgres_server import PostgresServer


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

    def text(self, *argv: str) -> str:
        """Run a command that must succeed; its stdout as it is."""
        code = main([*argv, "--database-url", self.url])
        captured = self.capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

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
    assert cli("projects", "create", " initech ")["name"] == "initech"  # as the admin API
    assert "empty" in cli.fails("projects", "create", "  ")
    assert "control characters" in cli.fails("projects", "create", "a\x00b")


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
    assert "control characters" in cli.fails(
        "keys", "create", "--project", "acme", "--name", "ci\nrunner"
    )
    cli("projects", "archive", "acme")
    assert "archived" in cli.fails("keys", "create", "--project", "acme")
    assert cli("keys", "list", "--include-revoked") == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("notaurl", "not a database URL"),
        ("mysql://conveyor@localhost/conveyor", "no driver for mysql databases"),
        ("postgresql://conveyor:s3cretpw@127.0.0.1:1/conveyor", "Connection refused"),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line(
    url: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """These were 100-line SQLAlchemy tracebacks whose last line was the only useful one."""
    for command in (("db", "current"), ("db", "upgrade"), ("projects", "list")):
        error = Cli(url, capsys).fails(*command)
        assert words in error and error.count("\n") == 1 and "s3cretpw" not in error


def test_a_missing_postgres_database_is_one_line(
    postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    error = Cli(postgres_server.url("no_such_db"), capsys).fails("keys", "list")
    assert 'database "no_such_db" does not exist' in error and error.count("\n") == 1


def test_an_unknown_revision_is_one_line(cli: Cli) -> None:
    assert "Can't locate revision identified by 'bogus'" in cli.fails("db", "upgrade", "bogus")
    assert "Can't locate revision identified by 'bogus'" in cli.fails("db", "downgrade", "bogus")


def _log(url: str, *rows: dict[str, Any]) -> None:
    database = Database(url)
    try:
        with database.session() as session:
            session.add_all(
                RequestLog(**{"request_id": f"req-{i}", "status_code": 200, **row})
                for i, row in enumerate(rows)
            )
    finally:
        database.close()


def test_usage_rows_for_billing_as_json_and_csv(upgraded: Cli) -> None:
    """Every bucket of the report, one row per bucket and group, project names beside ids;
    failed requests, other reports' endpoints and other times are left out."""
    cli = upgraded
    acme, globex = cli("projects", "create", "acme"), cli("projects", "create", "globex")
    day = 1_764_547_200  # 2025-12-01T00:00:00Z
    chat = {"endpoint": "/v1/chat/completions", "model": "m1", "api_key_id": "key_a"}
    _log(
        cli.url,
        {
            **chat,
            "project_id": acme["id"],
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 4,
            "created_at": day + 60,
        },
        {
            **chat,
            "project_id": acme["id"],
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "batch_id": "batch_1",
            "created_at": day + 86_400 + 5,
        },
        {
            **chat,
            "project_id": globex["id"],
            "prompt_tokens": 2,
            "completion_tokens": 1,
            "created_at": day + 120,
        },
        {
            **chat,
            "project_id": acme["id"],
            "prompt_tokens": 99,
            "created_at": day + 9,
            "status_code": 500,
        },
        {
            "endpoint": "/v1/embeddings",
            "project_id": acme["id"],
            "prompt_tokens": 50,
            "created_at": day + 30,
        },
        {**chat, "project_id": acme["id"], "prompt_tokens": 1000, "created_at": day + 3 * 86_400},
    )
    window = ("--start", "2025-12-01", "--end", str(day + 2 * 86_400))
    rows = cli("usage", "completions", *window, "--group-by", "project_id")
    assert [
        (r["start"], r["project_name"], r["input_tokens"], r["output_tokens"]) for r in rows
    ] == [
        ("2025-12-01T00:00:00Z", "acme", 10, 5),
        ("2025-12-01T00:00:00Z", "globex", 2, 1),
        ("2025-12-02T00:00:00Z", "acme", 7, 3),
    ]
    assert rows[0]["input_cached_tokens"] == 4 and rows[0]["num_model_requests"] == 1
    assert "model" not in rows[0]  # not grouped by it: not a column

    batch_only = cli("usage", "completions", *window, "--batch", "--project", "acme")
    assert [(r["input_tokens"], r["start_time"]) for r in batch_only] == [(7, day + 86_400)]
    (embedded,) = cli("usage", "embeddings", *window)
    assert embedded["input_tokens"] == 50 and "output_tokens" not in embedded

    csv_text = cli.text(
        "usage", "completions", *window, "--group-by", "project_id,batch", "--format", "csv"
    )
    header, *lines = csv_text.splitlines()
    assert header == (
        "start_time,end_time,start,end,project_id,project_name,batch,input_tokens,"
        "input_cached_tokens,output_tokens,num_model_requests"
    )
    assert lines[0].split(",")[5:] == ["acme", "false", "10", "4", "5", "1"]  # as in JSON
    assert len(lines) == 3
    # A window with no usage: the same header, so a daily billing import reads one schema.
    empty = ("--start", "2025-11-01", "--end", "2025-11-02")
    csv_text = cli.text(
        "usage", "completions", *empty, "--group-by", "project_id,batch", "--format", "csv"
    )
    assert csv_text.splitlines() == [header]
    embeddings_header = cli.text("usage", "embeddings", *empty, "--format", "csv").splitlines()
    assert embeddings_header == ["start_time,end_time,start,end,input_tokens,num_model_requests"]

    assert "cannot group by" in cli.fails("usage", "embeddings", *window, "--group-by", "user")
    assert "ISO date" in cli.fails("usage", "completions", "--start", "yesterday")
    assert "no project" in cli.fails("usage", "completions", *window, "--project", "initech")


def test_output_piped_into_a_reader_that_stops_is_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`conveyor projects list | head -1`: the rest has nowhere to go, and that is fine."""
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    database = Database(url)
    try:
        with database.session() as session:
            for i in range(1500):  # well past a pipe's buffer
                create_project(session, f"project-{i:04d}")
    finally:
        database.close()
    capsys.readouterr()
    command = [sys.executable, "-m", "conveyor.cli", "projects", "list", "--database-url", url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1) == b"["
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_requests_find_by_the_sdks_request_id_or_the_responses_id(upgraded: Cli) -> None:
    cli = upgraded
    row = {"endpoint": "/v1/chat/completions", "model": "m1", "prompt_tokens": 3}
    _log(
        cli.url,
        {**row, "http_request_id": "req_abc", "created_at": 100},
        {**row, "http_request_id": "trace-9", "created_at": 200},
        {**row, "http_request_id": "trace-9", "created_at": 300, "status_code": 429},
        {**row, "http_request_id": "req_x", "response_id": "chatcmpl-mine", "created_at": 400},
    )
    (found,) = cli("requests", "find", "req_abc")
    assert found["request_id"] == "req-0" and found["prompt_tokens"] == 3
    assert found["endpoint"] == "/v1/chat/completions" and found["prompt"] is None
    # A client's own X-Request-Id may name several requests: newest first.
    assert [r["status_code"] for r in cli("requests", "find", "trace-9")] == [429, 200]
    assert len(cli("requests", "find", "trace-9", "--limit", "1")) == 1
    assert cli("requests", "find", "req-1")[0]["http_request_id"] == "trace-9"
    assert cli("requests", "find", "chatcmpl-mine")[0]["request_id"] == "req-3"
    assert "no logged request" in cli.fails("requests", "find", "nothing-like-it")
    # Refused requests are logged with no request id: "" must not list them all.
    _log(cli.url, {**row, "request_id": "", "status_code": 401, "created_at": 500})
    assert "name the request" in cli.fails("requests", "find", " ")
    database = Database(cli.url)
    try:
        with database.session() as session:
            assert find_request_logs(session, "") == []
    finally:
        database.close()
    assert "--limit" in cli.fails("requests", "find", "x", "--limit", "99999999999999999999")
