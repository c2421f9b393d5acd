"""`conveyor db|projects|keys|usage|requests`: schema and tenant administration without
HTTP.

Each command talks to the database directly (the same queries as the admin
API) and prints OpenAI-shaped JSON, so scripts can pipe it to `jq`. A key's
secret is printed once, by `keys create`; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from conveyor.db import migrate
from conveyor.db.database import Database
from conveyor.db.database_errors import DATABASE_ERRORS, describe
from conveyor.db.key_store import create_key, get_key, list_keys, revoke_key
from conveyor.db.openai_objects import api_key_object, project_object
from conveyor.db.project import Project
from conveyor.db.project_store import (
    ProjectNameTaken,
    archive_project,
    create_project,
    find_project,
    list_projects,
)
from conveyor.db.request_log_lookup import find_request_logs
from conveyor.db.usage import (
    BUCKET_LIMITS,
    BUCKET_SECONDS,
    COMPLETIONS,
    EMBEDDINGS,
    UsageQuery,
    UsageQueryError,
)
from conveyor.display_names import key_name, project_name
from conveyor.settings import Settings
from conveyor.usage_export import csv_columns, rows_as_csv, usage_rows

_ALL = 1_000_000  # the CLI lists everything; pagination is for HTTP clients


class OperatorError(Exception):
    """A mistake the operator can fix; printed without a traceback."""


def add_operator_commands(
    sub: argparse._SubParsersAction, settings_from_args: Callable[[argparse.Namespace], Settings]
) -> None:
    def database_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database-url", default=None)
        parser.add_argument("--data-dir", default=None)

    def handler(run: Callable[[argparse.Namespace, str], Any]) -> Callable[..., int]:
        def wrapped(args: argparse.Namespace) -> int:
            url = settings_from_args(args).resolved_database_url
            try:
                result = run(args, url)
            except OperatorError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except DATABASE_ERRORS as exc:
                print(f"error: {describe(url, exc)}", file=sys.stderr)
                return 1
            try:
                if isinstance(result, str):
                    sys.stdout.write(result)
                elif result is not None:
                    print(json.dumps(result, indent=2))
                sys.stdout.flush()
            except BrokenPipeError:
                # Piped into `head`, which stopped reading: quietly, as a shell tool. The
                # interpreter's last flush at exit goes to /dev/null, not a second error.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 128 + signal.SIGPIPE
            return 0

        return wrapped

    db = sub.add_parser("db", help="the SQL schema: `conveyor db upgrade|downgrade|current`")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to the newest)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="revert migrations, e.g. `-1` or `base`")
    down.add_argument("revision")
    current = db_sub.add_parser("current", help="the database's revision and the newest one")
    for parser, run in ((up, _db_upgrade), (down, _db_downgrade), (current, _db_current)):
        database_flags(parser)
        parser.set_defaults(func=handler(run))

    projects = sub.add_parser("projects", help="tenants: `conveyor projects create|list|archive`")
    projects_sub = projects.add_subparsers(dest="projects_command", required=True)
    create = projects_sub.add_parser("create", help="a new project (a tenant) of this name")
    create.add_argument("name")
    listing = projects_sub.add_parser(
        "list", help="the projects (--include-archived: archived ones too)"
    )
    listing.add_argument("--include-archived", action="store_true")
    archive = projects_sub.add_parser("archive", help="its keys stop working; logs are kept")
    archive.add_argument("project", help="id or name")
    for parser, run in (
        (create, _projects_create),
        (listing, _projects_list),
        (archive, _projects_archive),
    ):
        database_flags(parser)
        parser.set_defaults(func=handler(run))

    keys = sub.add_parser("keys", help="API keys: `conveyor keys create|list|revoke`")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    make = keys_sub.add_parser("create", help="mint a key; its secret is printed only now")
    make.add_argument("--project", required=True, help="project id or name")
    make.add_argument("--name", default="")
    make.add_argument("--rpm", type=int, default=None, help="requests per minute")
    make.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    show = keys_sub.add_parser(
        "list", help="keys with their limits, never their secrets (--include-revoked)"
    )
    show.add_argument("--project", default=None, help="project id or name (default: all)")
    show.add_argument("--include-revoked", action="store_true")
    revoke = keys_sub.add_parser("revoke", help="refused by every API replica within a second")
    revoke.add_argument("key_id")
    for parser, run in ((make, _keys_create), (show, _keys_list), (revoke, _keys_revoke)):
        database_flags(parser)
        parser.set_defaults(func=handler(run))

    requests = sub.add_parser(
        "requests", help="logged requests: `conveyor requests find ID` (a user's report)"
    )
    requests_sub = requests.add_subparsers(dest="requests_command", required=True)
    find = requests_sub.add_parser(
        "find",
        help="the rows of the request a user quotes: the SDK's _request_id (x-request-id), "
        "or a response's id",
    )
    find.add_argument("identifier")
    find.add_argument(
        "--limit", type=int, default=20, help="newest first (default: 20, at most 1000)"
    )
    database_flags(find)
    find.set_defaults(func=handler(_requests_find))

    usage = sub.add_parser(
        "usage", help="billed tokens per bucket and group: `conveyor usage completions|embeddings`"
    )
    usage_sub = usage.add_subparsers(dest="usage_command", required=True)
    for name, report in (("completions", COMPLETIONS), ("embeddings", EMBEDDINGS)):
        parser = usage_sub.add_parser(
            name, help=f"the {name} usage report's rows, every page, as JSON or CSV"
        )
        parser.add_argument(
            "--start", required=True, help="unix seconds or an ISO date/time (UTC unless given)"
        )
        parser.add_argument("--end", default=None, help="exclusive; default: now")
        parser.add_argument("--bucket-width", choices=tuple(BUCKET_SECONDS), default="1d")
        parser.add_argument(
            "--group-by",
            default="",
            help=f"comma-separated: {', '.join(report.group_by_fields)}",
        )
        parser.add_argument(
            "--project", action="append", default=[], help="id or name (repeatable)"
        )
        parser.add_argument("--key", action="append", default=[], help="API key id (repeatable)")
        # dest: `model` would be read as the settings' served model
        parser.add_argument(
            "--model", dest="models", action="append", default=[], help="(repeatable)"
        )
        parser.add_argument(
            "--batch",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="only batch lines (--batch) or only direct requests (--no-batch)",
        )
        parser.add_argument("--format", choices=("json", "csv"), default="json")
        database_flags(parser)
        parser.set_defaults(func=handler(_usage), usage_report=report)


def _in_session(url: str, work: Callable[[Session], Any]) -> Any:
    migrate.require_head(url)
    database = Database(url)
    try:
        with database.session() as session:
            return work(session)
    finally:
        database.close()


def _project(session: Session, id_or_name: str) -> Project:
    project = find_project(session, id_or_name)
    if project is None:
        raise OperatorError(f"no project with id or name {id_or_name!r}")
    return project


def _db_upgrade(args: argparse.Namespace, url: str) -> dict[str, Any]:
    migrate.upgrade(url, args.revision)
    return {"current": migrate.current_revision(url), "head": migrate.head_revision()}


def _db_downgrade(args: argparse.Namespace, url: str) -> dict[str, Any]:
    migrate.downgrade(url, args.revision)
    return {"current": migrate.current_revision(url), "head": migrate.head_revision()}


def _db_current(_: argparse.Namespace, url: str) -> dict[str, Any]:
    return {"current": migrate.current_revision(url), "head": migrate.head_revision()}


def _projects_create(args: argparse.Namespace, url: str) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            name = project_name(args.name)
        except ValueError as exc:
            raise OperatorError(f"project name {args.name!r} {exc}") from None
        try:
            return project_object(create_project(session, name))
        except ProjectNameTaken as exc:
            raise OperatorError(str(exc)) from None

    return _in_session(url, work)


def _projects_list(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    def work(session: Session) -> list[dict[str, Any]]:
        page = list_projects(
            session, after=None, limit=_ALL, include_archived=args.include_archived
        )
        return [project_object(p) for p in page.items]

    return _in_session(url, work)


def _projects_archive(args: argparse.Namespace, url: str) -> dict[str, Any]:
    return _in_session(url, lambda s: project_object(archive_project(s, _project(s, args.project))))


def _keys_create(args: argparse.Namespace, url: str) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        project = _project(session, args.project)
        if project.status != "active":
            raise OperatorError(f"project {project.name} is archived")
        for flag in ("rpm", "tpm"):
            value = getattr(args, flag)
            if value is not None and not 1 <= value < 2**31:
                raise OperatorError(f"--{flag} must be between 1 and {2**31 - 1}")
        try:
            name = key_name(args.name)
        except ValueError as exc:
            raise OperatorError(f"key name {args.name!r} {exc}") from None
        minted = create_key(session, project, name, rpm=args.rpm, tpm=args.tpm)
        return api_key_object(minted.key, secret=minted.secret)

    result = _in_session(url, work)
    print("the key's secret is shown only now: store it", file=sys.stderr)
    return result


def _keys_list(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    def work(session: Session) -> list[dict[str, Any]]:
        project_id = _project(session, args.project).id if args.project else None
        page = list_keys(
            session,
            project_id=project_id,
            after=None,
            limit=_ALL,
            include_revoked=args.include_revoked,
        )
        return [api_key_object(k) for k in page.items]

    return _in_session(url, work)


def _keys_revoke(args: argparse.Namespace, url: str) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        key = get_key(session, args.key_id)
        if key is None:
            raise OperatorError(f"no API key with id {args.key_id!r}")
        return api_key_object(revoke_key(session, key))

    return _in_session(url, work)


_MOST_FOUND = 1000


def _requests_find(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    if not 1 <= args.limit <= _MOST_FOUND:
        raise OperatorError(f"--limit must be between 1 and {_MOST_FOUND}")
    if not args.identifier.strip():
        raise OperatorError(
            "name the request: the SDK's _request_id (x-request-id), the response's id, "
            "or the id it was queued under"
        )
    rows = _in_session(url, lambda session: find_request_logs(session, args.identifier, args.limit))
    if not rows:
        raise OperatorError(f"no logged request has the id {args.identifier!r}")
    return rows


def _usage(args: argparse.Namespace, url: str) -> list[dict[str, Any]] | str:
    def work(session: Session) -> tuple[UsageQuery, list[dict[str, Any]]]:
        width = args.bucket_width
        query = UsageQuery(
            start_time=_unix_time(args.start, "--start"),
            end_time=None if args.end is None else _unix_time(args.end, "--end"),
            bucket_width=width,
            group_by=tuple(f.strip() for f in args.group_by.split(",") if f.strip()),
            project_ids=tuple(_project(session, p).id for p in args.project),
            api_key_ids=tuple(args.key),
            models=tuple(args.models),
            batch=args.batch,
            limit=BUCKET_LIMITS[width][1],
        )
        try:
            return query, usage_rows(session, query, args.usage_report)
        except UsageQueryError as exc:
            raise OperatorError(exc.message) from None

    query, rows = _in_session(url, work)
    if args.format == "csv":
        return rows_as_csv(rows, csv_columns(query, args.usage_report))
    return rows


def _unix_time(text: str, flag: str) -> int:
    """Unix seconds, or an ISO 8601 date or date-time (UTC when it names no zone)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise OperatorError(
            f"{flag} must be unix seconds or an ISO date/time such as 2026-12-01, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
