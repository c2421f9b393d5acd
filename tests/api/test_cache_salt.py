"""cache_salt(): whose cached prompt blocks a request may share."""

from __future__ import annotations

from api.auth import ANONYMOUS, Principal
from api.cache_salt import cache_salt

ACME = Principal(project_id="proj_acme", api_key_id="key_1")
GLOBEX = Principal(project_id="proj_globex", api_key_id="key_2")


def test_projects_are_apart_by_default() -> None:
    assert cache_salt(ACME, None, "project") != cache_salt(GLOBEX, None, "project")
    assert cache_salt(ACME, None, "project") == cache_salt(
        Principal(project_id="proj_acme", api_key_id="another key"), None, "project"
    )
    assert cache_salt(ACME, None, "project") is not None


def test_unsalted_callers_share_everything() -> None:
    assert cache_salt(ANONYMOUS, None, "project") is None
    assert cache_salt(ACME, None, "global") is None
    assert cache_salt(GLOBEX, None, "global") is None


def test_a_requests_own_salt_narrows_sharing() -> None:
    salted = cache_salt(ACME, "s1", "project")
    assert salted not in (cache_salt(ACME, None, "project"), cache_salt(GLOBEX, "s1", "project"))
    # Under global scope the same salt is shared across projects, as in vLLM.
    assert cache_salt(ACME, "s1", "global") == cache_salt(GLOBEX, "s1", "global") is not None
    # A salt spelled like a project's cannot reach that project's blocks.
    assert cache_salt(ANONYMOUS, "proj_acme", "project") != cache_salt(ACME, None, "project")
