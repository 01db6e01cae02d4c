"""The site block ties sources, destinations, the ledger and the receiver together.

``save_site`` stores a :class:`~pacsflow.config.SiteConfig` as blocks (idempotently:
saving again overwrites), and ``load_site`` builds it back, so flows load blocks by
name and users can view and edit them in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.client.schemas.objects import BlockDocument
from prefect.context import SyncClientContext
from pydantic import BaseModel, Field, SecretStr, field_validator

from blocks.destinations import BLOCK_FOR_TYPE, destination_block
from blocks.sources import DicomSource
from pacsflow.config import ReceiverConfig, SiteConfig
from pacsflow.errors import ConfigError

DEFAULT_SITE = "default"


def block_name(site: str, name: str) -> str:
    """The block name of a site's source or destination ``name``.

    Sites on one Prefect server must not overwrite each other's sources, so a named
    site's blocks are ``<site>--<name>``. The default site keeps the plain names it has
    always had, so existing installs and their UI bookmarks keep working.
    """
    return name if site == DEFAULT_SITE else f"{site}--{name}"


class PacsflowSite(Block):
    """Which sources and destinations a site has, its ledger and its receiver."""

    _block_type_name = "pacsflow site"
    _block_type_slug = "pacsflow-site"
    _description = "The ledger, receiver and staging of a pacsflow site, and its sources."

    ledger_url: SecretStr = Field(
        description="SQLAlchemy URL of the ledger database (may hold a password)."
    )
    receiver_ae_title: str = Field(default="PACSFLOW", description="Our C-MOVE destination AE.")
    receiver_host: str = Field(default="127.0.0.1", description="Address the receiver binds.")
    receiver_port: int = Field(default=11112, description="Port the receiver listens on.")
    staging: str = Field(description="Folder for raw retrieved studies (holds identifiers).")
    sources: list[str] = Field(description="Names of pacsflow DICOM source blocks.")
    destinations: dict[str, str] = Field(
        description="Names of pacsflow destination blocks, each with its type (dicom...)."
    )

    @field_validator("destinations", mode="before")
    @classmethod
    def _names_only_were_folders(cls, value: Any) -> Any:
        # Sites saved before other destination types existed listed names only.
        return {name: "filesystem" for name in value} if isinstance(value, list) else value


def _absolute_sqlite(url: str, base: Path) -> str:
    """Workers may run elsewhere: store a relative SQLite path as an absolute one."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def _absolute_paths(model: BaseModel, base: Path) -> Any:
    """``model`` with every relative path in it (CA files, folders) made absolute."""
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            update[name] = (base / value).resolve()
        elif isinstance(value, BaseModel):
            update[name] = _absolute_paths(value, base)
    return model.model_copy(update=update)


def _site_blocks(config: SiteConfig, name: str, base: Path) -> list[tuple[str, Block]]:
    """The blocks that store ``config`` under site ``name``, each with its block name."""
    blocks: list[tuple[str, Block]] = [
        (block_name(name, source_name), DicomSource.from_config(source))
        for source_name, source in config.sources.items()
    ]
    blocks += [
        (block_name(name, dest_name), destination_block(_absolute_paths(dest, base)))
        for dest_name, dest in config.destinations.items()
    ]
    site = PacsflowSite(
        ledger_url=SecretStr(_absolute_sqlite(config.ledger, base)),
        receiver_ae_title=config.receiver.ae_title,
        receiver_host=config.receiver.host,
        receiver_port=config.receiver.port,
        staging=str((base / config.staging).resolve()),
        sources=list(config.sources),
        destinations={name: dest.type for name, dest in config.destinations.items()},
    )
    return [*blocks, (name, site)]


def _saved_documents(client: Any, names: list[str]) -> dict[tuple[str, str], BlockDocument]:
    """The block documents named ``names`` (of any type), by (block type slug, name).

    One request, secrets included, instead of one read per block.
    """
    response = client.request(
        "POST",
        "/block_documents/filter",
        json={
            "block_documents": {"name": {"any_": names}},
            "include_secrets": True,
            "limit": max(len(names) * 4, 10),
        },
    )
    documents = BlockDocument.model_validate_list(response.json())
    return {(doc.block_type.slug, doc.name): doc for doc in documents if doc.block_type}


def _unchanged(block: Block, saved: BlockDocument | None) -> bool:
    """True when ``saved`` already holds ``block``: same schema, same values, secrets too.

    Anything else (no document, a schema of another pacsflow version, a value edited in
    the UI, a document this cannot read back) counts as changed, so it is saved again.
    """
    if saved is None or saved.block_schema is None:
        return False
    if saved.block_schema.checksum != type(block)._calculate_schema_checksum():
        return False
    try:
        stored = type(block)._from_block_document(saved)
    except Exception:  # noqa: BLE001 (unreadable: overwrite it)
        return False
    fields = set(type(block).model_fields)  # not the document's id and name kept beside them
    return stored.model_dump(include=fields) == block.model_dump(include=fields)


def save_site(config: SiteConfig, name: str = DEFAULT_SITE, base: Path | None = None) -> None:
    """Save ``config`` as blocks: one per source and destination, and the site itself.

    A block whose saved document already holds the same values is left as it is. Each
    ``Block.save`` makes about seven requests (register the block type and schema, try
    to create, read, update, read back), 0.7 s of every ``pacsflow extract`` for a site
    of three blocks on the local server; one read of all the documents tells which of
    them the config file changed, and most runs change none. A block edited in the UI
    differs from the file, so the file's values are saved over it, as before.

    All the saves share one API client. Each ``Block.save`` otherwise opens two (one to
    register the block type, one for the document), and every new client builds a TLS
    context and fetches a CSRF token first.
    """
    base = base or Path.cwd()
    blocks = _site_blocks(config, name, base)
    with SyncClientContext.get_or_create() as context:
        saved = _saved_documents(context.client, [label for label, _ in blocks])
        for label, block in blocks:
            if not _unchanged(block, saved.get((block.get_block_type_slug(), label))):
                block.save(label, overwrite=True)


def _load(block_type: type[Block], name: str, what: str) -> Block:
    try:
        return block_type.load(name)
    except ValueError as exc:
        raise ConfigError(
            f"no {what} block named {name!r} on the Prefect server; run "
            "`pacsflow configure pacsflow.yaml` first"
        ) from exc


def load_site(name: str = DEFAULT_SITE) -> SiteConfig:
    """Build the SiteConfig back from the blocks saved under ``name``."""
    site = _load(PacsflowSite, name, "pacsflow site")
    return SiteConfig(
        ledger=site.ledger_url.get_secret_value(),
        receiver=ReceiverConfig(
            ae_title=site.receiver_ae_title, host=site.receiver_host, port=site.receiver_port
        ),
        staging=Path(site.staging),
        sources={
            n: _load(DicomSource, block_name(name, n), "DICOM source").to_config()
            for n in site.sources
        },
        destinations={
            n: _load(BLOCK_FOR_TYPE[kind], block_name(name, n), f"{kind} destination").to_config()
            for n, kind in site.destinations.items()
        },
    )
