"""Site and project configuration: frozen pydantic models over plain data.

The models validate shape only; :func:`load_site_config` and
:func:`load_project_config` read the YAML files, so a configuration can be built and
checked in a test without touching the disk or the environment.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from pacsflow.errors import ConfigError
from pacsflow.windows import ExtractionWindows

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
_AE_TITLE = r"^[ -~]{1,16}$"


class RetrieveMethod(StrEnum):
    """How studies are pulled from a source (PS3.4 Annex C.4.2 and C.4.3)."""

    MOVE = "move"
    GET = "get"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceTLS(_Frozen):
    """DICOM over TLS to a source (PS3.15 Annex B): verify it, optionally prove who we are.

    Paths name PEM files on every worker; the files stay there (a private key never
    goes into a Prefect block).
    """

    ca_file: Path | None = Field(
        default=None,
        description="CA certificates that signed the source's certificate (PEM); "
        "default: the system's.",
    )
    cert_file: Path | None = Field(
        default=None, description="Our client certificate (PEM), if the source asks for one."
    )
    key_file: Path | None = Field(default=None, description="The private key of cert_file.")
    check_hostname: bool = Field(
        default=True, description="Require the certificate to name the source's host."
    )

    @model_validator(mode="after")
    def _pair(self) -> SourceTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (or neither)")
        return self


class SourceConfig(_Frozen):
    """A DICOM query/retrieve SCP that we pull from."""

    ae_title: Annotated[str, Field(pattern=_AE_TITLE, description="The source's AE title.")]
    host: str = Field(description="Host name or address of the source.")
    port: int = Field(ge=1, le=65535, description="DICOM port of the source.")
    max_concurrent: int = Field(
        default=2,
        ge=1,
        description="Most retrievals running against it at once, across every project, "
        "flow run and worker; each also runs at most one query beside its retrieval "
        "(find_ahead).",
    )
    find_ahead: bool = Field(
        default=True,
        description="While a lane retrieves one study, C-FIND its next one on a second "
        "association, so retrievals follow each other without a gap; at most "
        "max_concurrent queries beside max_concurrent retrievals. False: one association "
        "per lane, queries and retrievals together at most max_concurrent.",
    )
    retrieve: RetrieveMethod = Field(
        default=RetrieveMethod.MOVE, description="C-MOVE into our receiver, or C-GET."
    )
    timeout: float = Field(default=60.0, gt=0, description="Network timeout in seconds.")
    max_images: int | None = Field(
        default=None,
        ge=1,
        description="Most instances being retrieved from this source at once, across every "
        "project, flow run and worker; None sets no image limit.",
    )
    tls: SourceTLS | None = Field(
        default=None, description="Talk DICOM over TLS to this source; None: plain TCP."
    )
    store_ae_titles: list[str] = Field(
        default=[],
        description="AE titles the source sends C-MOVE results with, when not ae_title; "
        "the receiver accepts only the sources' titles.",
    )
    store_hosts: list[str] = Field(
        default=[],
        description="Other hosts or addresses the source sends C-MOVE results from; "
        "the receiver accepts only the sources' addresses.",
    )
    retry_delays: list[float] = Field(
        default=[10.0, 60.0, 180.0],
        description="Seconds to wait before each retry when the source is down or fails; "
        "[] never retries within a run.",
    )
    windows: ExtractionWindows | None = Field(
        default=None,
        description="When the source may be queried (see pacsflow.windows); outside these "
        "times its studies wait. None: at any time.",
    )

    @field_validator("retry_delays")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be zero or more seconds")
        return value

    @field_validator("ae_title", mode="before")
    @classmethod
    def _strip_ae(cls, value: object) -> object:
        # Before the pattern check, so "   " is refused rather than becoming "".
        return value.strip() if isinstance(value, str) else value


# -- export destinations: one model per ``type:``, see pacsflow/export/ for each one ------


class FilesystemDestinationConfig(_Frozen):
    """Export into a folder: ``<path>/<project>/<pseudo patient>/<pseudo study>/``."""

    type: Literal["filesystem"] = "filesystem"
    path: Path = Field(description="Root folder; one sub-folder per project is created.")
    zip: bool = Field(
        default=False,
        description="Write one <pseudo study>.zip per study instead of a folder of files.",
    )


class DicomTlsConfig(_Frozen):
    """DICOM TLS (PS3.15 Annex B.1, the Basic TLS Secure Transport Connection Profile)."""

    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the node's certificate; None trusts the "
        "system's CAs.",
    )
    cert_file: Path | None = Field(
        default=None, description="Our PEM client certificate, if the node asks for one."
    )
    key_file: Path | None = Field(default=None, description="Private key of cert_file (PEM).")
    check_hostname: bool = Field(
        default=True, description="Check that the node's certificate names its host."
    )

    @model_validator(mode="after")
    def _key_with_cert(self) -> DicomTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


class DicomDestinationConfig(_Frozen):
    """Send studies by C-STORE to a DICOM node (a research PACS, an XNAT, an Orthanc)."""

    type: Literal["dicom"]
    ae_title: Annotated[str, Field(pattern=_AE_TITLE, description="The node's AE title.")]
    host: str = Field(description="Host name or address of the node.")
    port: int = Field(ge=1, le=65535, description="DICOM port of the node.")
    calling_ae_title: Annotated[str, Field(pattern=_AE_TITLE)] = Field(
        default="PACSFLOW",
        description="Our AE title; the node must accept C-STORE and C-FIND from it.",
    )
    workers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Associations sending one study at once, each in a process of its own.",
    )
    timeout: float = Field(default=60.0, gt=0, description="Network timeout in seconds.")
    tls: DicomTlsConfig | None = Field(default=None, description="DICOM TLS; None is plain TCP.")


class DicomwebDestinationConfig(_Frozen):
    """Send studies by STOW-RS to a DICOMweb archive (PS3.18 Section 10.5)."""

    type: Literal["dicomweb"]
    url: str = Field(
        pattern=r"^https?://", description="Base URL of the service, e.g. https://host/dicom-web."
    )
    username: str | None = Field(default=None, description="User name for HTTP basic auth.")
    password: SecretStr | None = Field(default=None, description="Password for basic auth.")
    token: SecretStr | None = Field(default=None, description="Bearer token (instead of basic).")
    batch_size: int = Field(default=20, ge=1, le=1000, description="Instances per STOW-RS request.")
    workers: int = Field(
        default=2, ge=1, le=16, description="STOW-RS requests sending one study at once."
    )
    timeout: float = Field(default=120.0, gt=0, description="HTTP timeout in seconds.")
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle for https; None uses the system's."
    )

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> DicomwebDestinationConfig:
        if self.token is not None and (self.username or self.password):
            raise ValueError("give either token (bearer) or username and password (basic)")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        return self


class FtpsDestinationConfig(_Frozen):
    """Upload one zip per study to an FTP server over explicit TLS (``AUTH TLS``)."""

    type: Literal["ftps"]
    host: str = Field(description="Host name or address of the FTPS server.")
    port: int = Field(default=21, ge=1, le=65535, description="Control port of the server.")
    username: str = Field(description="FTP user name.")
    password: SecretStr = Field(description="FTP password.")
    directory: str = Field(
        default="/", description="Remote folder that holds one sub-folder per project."
    )
    timeout: float = Field(default=60.0, gt=0, description="Network timeout in seconds.")
    ca_file: Path | None = Field(
        default=None, description="PEM file of the CAs that sign the server's certificate."
    )
    check_hostname: bool = Field(
        default=True, description="Check that the server's certificate names its host."
    )


def _destination_tag(value: Any) -> str | None:
    """A destination without ``type:`` is a folder, as before other types existed."""
    if isinstance(value, dict):
        return value.get("type", "filesystem")
    return getattr(value, "type", None)


#: One site destination: pydantic picks the model by its ``type:`` key.
DestinationConfig = Annotated[
    Annotated[FilesystemDestinationConfig, Tag("filesystem")]
    | Annotated[DicomDestinationConfig, Tag("dicom")]
    | Annotated[DicomwebDestinationConfig, Tag("dicomweb")]
    | Annotated[FtpsDestinationConfig, Tag("ftps")],
    Discriminator(
        _destination_tag,
        custom_error_type="destination_type",
        custom_error_message="type: Input should be 'filesystem', 'dicom', 'dicomweb' or 'ftps'",
    ),
]


class ReceiverConfig(_Frozen):
    """Our own storage SCP, the C-MOVE destination. Sources must know this AE title."""

    ae_title: Annotated[str, Field(pattern=_AE_TITLE)] = "PACSFLOW"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)


class SiteConfig(_Frozen):
    """Everything about one site: where the sources are, where studies go."""

    ledger: str = Field(default="sqlite:///.pacsflow/ledger.db", description="SQLAlchemy URL.")
    receiver: ReceiverConfig = ReceiverConfig()
    staging: Path = Path(".pacsflow/staging")
    sources: dict[str, SourceConfig]
    destinations: dict[str, DestinationConfig]

    @field_validator("sources", "destinations")
    @classmethod
    def _names_are_slugs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(SLUG, name):
                raise ValueError(
                    f"name {name!r} must be lowercase letters, digits and dashes "
                    "(it becomes a Prefect block name and a concurrency tag)"
                )
        if not value:
            raise ValueError("declare at least one")
        return value


class ProfileOption(StrEnum):
    """De-identification options of DICOM PS3.15 Annex E (Table E.1-1, option columns)."""

    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"
    CLEAN_PIXEL_DATA = "clean_pixel_data"
    """Clean Pixel Data (PS3.15 E.3.1): no attribute rule; the pixel policy reads it."""


class FilterConfig(_Frozen):
    """Which retrieved series a project keeps. A study left with none ends ``excluded``."""

    exclude_series_descriptions: list[str] = Field(
        default_factory=list,
        description="Drop series whose SeriesDescription contains any of these "
        "(case-insensitive), e.g. localizer, scout.",
    )
    manufacturers: list[str] = Field(
        default_factory=list,
        description="Keep only series whose Manufacturer contains one of these "
        "(case-insensitive); [] keeps all.",
    )
    min_instances_per_series: int = Field(
        default=0, ge=0, description="Drop series with fewer instances than this."
    )


class PixelPolicyMode(StrEnum):
    """What to do with an instance whose pixels may carry burned-in identifiers.

    There is no "off": a project that wants pixels exported unseen must say so in a
    profile it owns, not by flipping a switch here.
    """

    QUARANTINE = "quarantine"
    CLEAN = "clean"


class PixelPolicyConfig(_Frozen):
    """How a project treats identifiers in pixel and bulk data (README, "Pixel PHI")."""

    policy: PixelPolicyMode = Field(
        default=PixelPolicyMode.QUARANTINE,
        description="quarantine: hold back a study with an instance that says or is likely "
        "to carry burned-in text, or in which OCR finds text. clean: mask the regions a "
        "deid recipe knows for that device, OCR again, and quarantine what still has text.",
    )
    keep_overlays: bool = Field(
        default=False,
        description="Keep overlay planes (60xx); kept overlays are OCR'd. The profile must "
        "keep them too (the Basic Profile removes them).",
    )
    keep_waveforms: bool = Field(
        default=False,
        description="Keep WaveformSequence; kept waveform data is scanned for text.",
    )
    keep_curves: bool = Field(
        default=False, description="Keep retired curve groups (50xx); they are removed otherwise."
    )
    ocr_every_image: bool = Field(
        default=False,
        description="OCR every image, not only those the risk rules send to OCR (slower).",
    )
    ocr_min_confidence: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Tesseract word confidence (0-100) from which a word of 3 or more "
        "letters or digits counts as text found.",
    )
    ocr_max_frames: int = Field(
        default=3, ge=1, description="Frames of a multi-frame image to OCR, evenly spaced."
    )
    recipe_files: list[Path] = Field(
        default_factory=list,
        description="Extra deid recipe files (%filter sections with coordinates) naming the "
        "regions to mask on this project's devices; relative to the project file.",
    )


#: What to do when a manifest row does not name exactly one study (see pacsflow.dicom.matching).
AmbiguityPolicy = Literal["none", "date_match", "all"]


class ProjectConfig(_Frozen):
    """One research project: which sources to search, in order, and where to export."""

    name: Annotated[str, Field(pattern=SLUG, description="Project slug, as in the manifest.")]
    sources: list[str] = Field(min_length=1, description="Source names; the first is primary.")
    destination: str
    modalities: list[str] = Field(default_factory=list, description="Keep only these; [] = all.")
    profile: str = Field(default="basic", description="Base de-identification profile.")
    profile_options: list[ProfileOption] = Field(
        default_factory=list, description="PS3.15 profile options to apply on the base."
    )
    profile_files: list[Path] = Field(
        default_factory=list,
        description="Project tag-operation files layered on the base, in order; relative "
        "paths are relative to the project file.",
    )
    filters: FilterConfig = FilterConfig()
    pixels: PixelPolicyConfig = Field(
        default_factory=PixelPolicyConfig,
        description="Pixel PHI policy: burned-in text, overlays, waveforms, JPEG segments.",
    )
    base_dir: Path | None = Field(
        default=None, description="Folder of the project file; set by the loader."
    )
    key_secret: str | None = Field(
        default=None,
        description="Prefect Secret block with the pseudonymisation key; default <name>-key.",
    )
    max_wait_hours: float = Field(
        default=24.0,
        ge=0,
        description="Longest a run waits for a closed source's window to open. A window "
        "further away ends the run with its studies still pending, for the next pull; "
        "0 never waits.",
    )
    ambiguity: AmbiguityPolicy = Field(
        default="none",
        description="When a row's MRN and accession match several studies, or the study "
        "date differs from the manifest's: 'none' retrieves nothing and records the study "
        "ambiguous; 'date_match' keeps the one match on the manifest's date (else "
        "ambiguous); 'all' retrieves every match.",
    )
    allow_partial: bool = Field(
        default=False,
        description="Export a study that still lacks instances after they were fetched "
        "again (the ledger records it exported, with error type 'partial' and both counts). "
        "False ends it 'partial' and exports nothing.",
    )

    @property
    def key_secret_name(self) -> str:
        return self.key_secret or f"{self.name}-key"

    @property
    def resolved_profile_files(self) -> list[Path]:
        base = self.base_dir or Path.cwd()
        return [path if path.is_absolute() else base / path for path in self.profile_files]

    @property
    def resolved_pixel_recipes(self) -> list[Path]:
        base = self.base_dir or Path.cwd()
        return [path if path.is_absolute() else base / path for path in self.pixels.recipe_files]

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [m.strip().upper() for m in value]

    @model_validator(mode="after")
    def _unique_sources(self) -> ProjectConfig:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources lists a name twice")
        return self

    def check_against(self, site: SiteConfig) -> None:
        """Fail if the project names a source or destination the site does not have."""
        for name in self.sources:
            if name not in site.sources:
                raise ConfigError(
                    f"project {self.name!r}: source {name!r} is not declared in the site "
                    f"config; known sources: {sorted(site.sources)}"
                )
        if self.destination not in site.destinations:
            raise ConfigError(
                f"project {self.name!r}: destination {self.destination!r} is not declared in "
                f"the site config; known destinations: {sorted(site.destinations)}"
            )


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  - {key}: {item['msg']}")
    lines.append("Fix these keys and run the command again.")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file. Pass the path of an existing YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site configuration file (default ``pacsflow.yaml``)."""
    path = Path(path)
    try:
        return SiteConfig.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def load_project_config(path: str | Path) -> ProjectConfig:
    """Read and validate a project file (``projects/<slug>.yaml``)."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("base_dir", str(path.resolve().parent))
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
