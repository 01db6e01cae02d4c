"""The extract-project run form: titles a user reads, and the project picked from a list."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from deployments.form import form_schema
from flows.extract import extract_project
from flows.naming import is_generated, run_name


def _schema() -> dict:
    return parameter_schema(extract_project).model_dump()


def test_every_parameter_has_a_title_and_a_description() -> None:
    form = form_schema(_schema(), ["lung-ct"])["properties"]
    assert form["force_key_change"]["title"] == "Accept a new pseudonymisation key"
    for name, field in form.items():
        assert field["title"] != name or name == "site", name
        assert field.get("description"), f"{name} has no description in the form"


def test_the_project_is_a_choice_of_the_sites_projects_or_a_file() -> None:
    project = form_schema(_schema(), ["lung-ct", "brain-mr"])["properties"]["project"]
    known, path = project["anyOf"]
    assert known["enum"] == ["brain-mr", "lung-ct"]
    assert path == {"title": "A project file", "type": "string"}
    # No projects registered yet: a plain text box.
    assert form_schema(_schema(), [])["properties"]["project"]["type"] == "string"


def test_a_project_pinned_by_a_schedule_stays_pinned() -> None:
    schema = _schema()
    schema["properties"]["project"].update(readOnly=True, enum=["projects/lung-ct.yaml"])
    project = form_schema(schema, ["lung-ct"])["properties"]["project"]
    assert project["enum"] == ["projects/lung-ct.yaml"] and "anyOf" not in project


def test_prefects_made_up_names_are_replaced_and_typed_ones_kept() -> None:
    import datetime as dt

    today = dt.date(2026, 12, 2)
    run_id = "8f14e45f-ceea-467f-a0e6-5a7c2b3d9e10"
    assert is_generated("crimson-fox") and is_generated(None)
    assert run_name("projects/lung-ct.yaml", "crimson-fox", run_id, today) == (
        "lung-ct-2026-12-02-8f14e4"
    )
    assert run_name("lung-ct", "rerun-after-the-profile-fix", run_id, today) == (
        "rerun-after-the-profile-fix"
    )
    assert not is_generated("Second pull")


def test_the_names_the_ui_form_fills_in_are_replaced_too() -> None:
    """Names the Prefect UI's run form filled in, seen in tests/integration/test_ui_browser.py."""
    for name in ("omega118-broglie-a", "epsilon150-heisenberg-m", "iota5-qumarkaj"):
        assert is_generated(name), name
    for typed in ("lung-ct-rerun", "omega", "Sigma2-pull", "alpha2_rerun", "rerun-alpha2-x"):
        assert not is_generated(typed), typed
