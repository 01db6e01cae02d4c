"""The project's pseudonymisation key, kept in a Prefect Secret block named per site.

Two sites on one Prefect server must never share a key by accident, so the Secret is
named ``<site>--<key_secret>`` (``default--lung-ct-key``). Installs from before sites
had names kept their key as plain ``<key_secret>``: the ``default`` site still reads it
when its own name does not exist, so their pseudonyms stay the same. Another site never
falls back to it: a key it did not create would link its pseudonyms to another site's.
"""

from __future__ import annotations

import logging

from prefect.blocks.system import Secret

from pacsflow.deid.pseudonyms import new_key

LOGGER = logging.getLogger(__name__)

#: The site whose key secrets may still carry their pre-namespacing names.
LEGACY_SITE = "default"


def key_secret_name(site: str, secret_name: str) -> str:
    """The Secret block name of project key ``secret_name`` for site block ``site``."""
    return f"{site}--{secret_name}"


def _load(name: str) -> str | None:
    try:
        return str(Secret.load(name).get())
    except ValueError:
        return None


def project_key(secret_name: str, site: str) -> str:
    """The key of ``secret_name`` for ``site``; a random one is created on first use.

    Creation never overwrites: if two runs race to create it, both read the winner's.
    """
    name = key_secret_name(site, secret_name)
    key = _load(name)
    if key is None and site == LEGACY_SITE:
        key = _load(secret_name)
    if key is not None:
        return key
    try:
        Secret(value=new_key()).save(name, overwrite=False)
        LOGGER.info("created pseudonymisation key secret %r", name)
    except ValueError:
        pass  # created by a concurrent run a moment ago
    return str(Secret.load(name).get())
