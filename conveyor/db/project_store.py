"""Projects: create, find, list and archive; shared by the admin API and `conveyor projects`."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.db.api_key import ApiKey
from conveyor.db.base import now
from conveyor.db.batch_store import cancel_project_batches
from conveyor.db.ids import new_id
from conveyor.db.pagination import Page, paginate
from conveyor.db.project import Project


class ProjectNameTaken(ValueError):
    """Project names are unique, so the CLI can address a project by name."""


def create_project(session: Session, name: str) -> Project:
    project = Project(id=new_id("proj_"), name=name, status="active", created_at=now())
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        raise ProjectNameTaken(f"a project named {name!r} already exists") from None
    return project


def get_project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def find_project(session: Session, id_or_name: str) -> Project | None:
    """By id or by name: operators type names, scripts pass ids.

    An id wins: a project may be *named* like another project's id, and a command
    given that id must not act on the namesake.
    """
    return (
        session.get(Project, id_or_name)
        or session.scalars(select(Project).where(Project.name == id_or_name)).first()
    )


def list_projects(
    session: Session, *, after: str | None, limit: int, include_archived: bool
) -> Page[Project]:
    scope = select(Project)
    query = scope if include_archived else scope.where(Project.status == "active")
    return paginate(
        session,
        query,
        created_at=Project.created_at,
        id_column=Project.id,
        after=after,
        limit=limit,
        cursor_scope=scope,
    )


def rename_project(session: Session, project: Project, name: str) -> Project:
    project.name = name
    try:
        session.flush()
    except IntegrityError:
        raise ProjectNameTaken(f"a project named {name!r} already exists") from None
    return project


def archive_project(session: Session, project: Project) -> Project:
    """Archived projects keep their logs and objects; their keys are revoked (so key lists
    and audits show them as such) and their running batches are cancelled (work nobody
    can fetch or be billed for any more)."""
    if project.status != "archived":
        project.status = "archived"
        project.archived_at = now()
    session.execute(
        update(ApiKey)
        .where(ApiKey.project_id == project.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=project.archived_at)
    )
    cancel_project_batches(session, project.id)
    return project
