"""TLS for associations to a source: an ``ssl`` context from the source's ``tls`` settings."""

from __future__ import annotations

import ssl

from pacsflow.config import SourceConfig, SourceTLS
from pacsflow.errors import ConfigError


def client_context(tls: SourceTLS) -> ssl.SSLContext:
    """A client context that verifies the source and, if configured, presents our cert."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
        context.check_hostname = tls.check_hostname
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the source's TLS files ({exc}); check ca_file, cert_file and "
            "key_file: PEM files readable by this worker"
        ) from exc
    return context


def tls_args(source: SourceConfig) -> tuple[ssl.SSLContext, str | None] | None:
    """``AE.associate(tls_args=...)`` for ``source``: None when it speaks plain TCP."""
    if source.tls is None:
        return None
    return client_context(source.tls), source.host if source.tls.check_hostname else None
