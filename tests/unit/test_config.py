"""Site and project configuration: the example loads, every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow.config import (
    FilesystemDestinationConfig,
    ProjectConfig,
    RetrieveMethod,
    SiteConfig,
    SourceConfig,
    load_project_config,
    load_site_config,
)
from pacsflow.errors import ConfigError

EXAMPLE_SITE = """\
# pacsflow.yaml: one per site
ledger: postgresql+psycopg://pacsflow@db.hospital.example/pacsflow
receiver:
  ae_title: PACSFLOW
  host: 0.0.0.0
  port: 11112
staging: /data/pacsflow/staging
sources:
  primary:                 # the clinical PACS, searched first
    ae_title: MAINPACS
    host: pacs.hospital.example
    port: 104
    max_concurrent: 4
    retrieve: move
  secondary:               # the vendor neutral archive, searched when primary has nothing
    ae_title: VNA
    host: vna.hospital.example
    port: 11112
    retrieve: get
    timeout: 120
destinations:
  research-share:
    type: filesystem
    path: /mnt/research/exports
"""

EXAMPLE_PROJECT = """\
name: my-study
sources: [primary, secondary]
destination: research-share
modalities: [ct, " MR "]
"""


def write(tmp_path: Path, text: str, name: str = "pacsflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def site_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in EXAMPLE_SITE, old
    return write(tmp_path, EXAMPLE_SITE.replace(old, new, 1))


def test_example_site_config_loads(tmp_path: Path) -> None:
    site = load_site_config(write(tmp_path, EXAMPLE_SITE))
    assert site.ledger.startswith("postgresql+psycopg://")
    assert site.receiver.ae_title == "PACSFLOW"
    assert site.receiver.port == 11112
    assert site.staging == Path("/data/pacsflow/staging")
    assert list(site.sources) == ["primary", "secondary"]
    primary, secondary = site.sources["primary"], site.sources["secondary"]
    assert (primary.ae_title, primary.host, primary.port) == (
        "MAINPACS",
        "pacs.hospital.example",
        104,
    )
    assert primary.retrieve is RetrieveMethod.MOVE
    assert primary.max_concurrent == 4
    assert primary.timeout == 60.0  # default
    assert secondary.retrieve is RetrieveMethod.GET
    assert secondary.max_concurrent == 2  # default
    assert secondary.timeout == 120.0
    assert site.destinations["research-share"].path == Path("/mnt/research/exports")


def test_example_project_config_loads_and_matches_site(tmp_path: Path) -> None:
    site = load_site_config(write(tmp_path, EXAMPLE_SITE))
    project = load_project_config(write(tmp_path, EXAMPLE_PROJECT, "my-study.yaml"))
    assert project.name == "my-study"
    assert project.sources == ["primary", "secondary"]
    assert project.modalities == ["CT", "MR"]
    assert project.profile == "basic"
    assert project.key_secret_name == "my-study-key"
    project.check_against(site)  # does not raise


def test_site_defaults_apply(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  pacs: {ae_title: PACS, host: localhost, port: 104}\n"
        "destinations:\n  out: {path: /tmp/out}\n",
    )
    site = load_site_config(path)
    assert site.ledger == "sqlite:///.pacsflow/ledger.db"
    assert site.receiver.ae_title == "PACSFLOW"
    assert site.destinations["out"].type == "filesystem"


def test_config_is_frozen() -> None:
    source = SourceConfig(ae_title="PACS", host="localhost", port=104)
    with pytest.raises(ValueError, match="frozen"):
        source.port = 105  # type: ignore[misc]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port: 104", 'port: "abc"', r"sources\.primary\.port: Input should be a valid integer"),
        ("port: 104", "port: 70000", r"sources\.primary\.port: Input should be less than"),
        ("retrieve: get", "retrieve: push", r"sources\.secondary\.retrieve: Input should be"),
        ("    max_concurrent: 4", "    max_conc: 4", r"sources\.primary\.max_conc: Extra inputs"),
        ("staging:", "stageing:", r"stageing: Extra inputs are not permitted"),
        ("ae_title: VNA", "ae_title: WAY-TOO-LONG-AE-TITLE", r"sources\.secondary\.ae_title: "),
        ("timeout: 120", "timeout: 0", r"sources\.secondary\.timeout: Input should be greater"),
        ("type: filesystem", "type: s3", r"destinations\.research-share: type: Input should be"),
        ("  port: 11112\nstaging", "  port: -1\nstaging", r"receiver\.port: Input should be"),
        ("  primary:  ", "  Primary:  ", r"sources: Value error, name 'Primary' must be lowercase"),
    ],
)
def test_bad_key_names_the_dotted_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = site_with(tmp_path, old, new)
    with pytest.raises(ConfigError, match=expected) as info:
        load_site_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid configuration")
    assert message.endswith("Fix these keys and run the command again.")


def test_several_bad_keys_are_all_named(tmp_path: Path) -> None:
    text = EXAMPLE_SITE.replace("port: 104", 'port: "abc"').replace("retrieve: get", "retrieve: x")
    with pytest.raises(ConfigError) as info:
        load_site_config(write(tmp_path, text))
    message = str(info.value)
    assert "  - sources.primary.port: " in message
    assert "  - sources.secondary.retrieve: " in message


def test_missing_required_section(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  pacs: {ae_title: PACS, host: h, port: 104}\n")
    with pytest.raises(ConfigError, match=r"- destinations: Field required"):
        load_site_config(path)


def test_empty_sources_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sources: {}\ndestinations:\n  out: {path: /tmp/out}\n")
    with pytest.raises(ConfigError, match=r"- sources: Value error, declare at least one"):
        load_site_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_site_config(path)
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_project_config(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "sources: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site_config(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level"):
        load_site_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: My Study\nsources: [a]\ndestination: d\n", r"- name: String should match"),
        ("name: s\nsources: []\ndestination: d\n", r"- sources: List should have at least 1"),
        ("name: s\nsources: [a, a]\ndestination: d\n", r"sources lists a name twice"),
        ("name: s\nsources: [a]\n", r"- destination: Field required"),
        ("name: s\nsources: [a]\ndestination: d\nmodality: [CT]\n", r"- modality: Extra"),
    ],
)
def test_bad_project_key_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_project_config(write(tmp_path, text, "project.yaml"))


def _site() -> SiteConfig:
    return SiteConfig(
        sources={
            "primary": SourceConfig(ae_title="P", host="h", port=104),
            "secondary": SourceConfig(ae_title="S", host="h", port=105),
        },
        destinations={"share": FilesystemDestinationConfig(path=Path("/tmp/x"))},
    )


def test_project_naming_an_undeclared_source() -> None:
    project = ProjectConfig(name="my-study", sources=["primary", "archive"], destination="share")
    with pytest.raises(
        ConfigError,
        match=r"project 'my-study': source 'archive' is not declared in the site config; "
        r"known sources: \['primary', 'secondary'\]",
    ):
        project.check_against(_site())


def test_project_naming_an_undeclared_destination() -> None:
    project = ProjectConfig(name="my-study", sources=["primary"], destination="nas")
    with pytest.raises(
        ConfigError,
        match=r"project 'my-study': destination 'nas' is not declared in the site config; "
        r"known destinations: \['share'\]",
    ):
        project.check_against(_site())


def test_key_secret_can_be_overridden() -> None:
    project = ProjectConfig(
        name="my-study", sources=["primary"], destination="share", key_secret="shared-key"
    )
    assert project.key_secret_name == "shared-key"


def test_ae_title_is_stripped_and_blank_is_refused() -> None:
    assert SourceConfig(ae_title=" PACS ", host="h", port=104).ae_title == "PACS"
    with pytest.raises(ValueError, match=r"ae_title\n  String should match pattern"):
        SourceConfig(ae_title="   ", host="h", port=104)
