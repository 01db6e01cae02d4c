"""The project's pseudonymisation key, kept in a Prefect Secret block."""

from __future__ import annotations

import logging

from prefect.blocks.system import Secret

from pacsflow.deid.pseudonyms import new_key

LOGGER = logging.getLogger(__name__)


def project_key(secret_name: str) -> str:
    """The key in Secret ``secret_name``; a random one is created on first use.

    Creation never overwrites: if two runs race to create it, both read the winner's.
    """
    try:
        return str(Secret.load(secret_name).get())
    except ValueError:
        pass
    try:
        Secret(value=new_key()).save(secret_name, overwrite=False)
        LOGGER.info("created pseudonymisation key secret %r", secret_name)
    except ValueError:
        pass  # created by a concurrent run a moment ago
    return str(Secret.load(secret_name).get())
