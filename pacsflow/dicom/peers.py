"""Who may send studies to our receiver: the site's own sources, nobody else.

A receiver that stores whatever arrives is an open door into the staging area (and a
way to plant files in a study). It accepts an association only when the calling AE
title and the peer's address both belong to a configured source (or to pacsflow itself,
which checks its own receiver with C-ECHO). Sources that send from another AE title or
host than the one we query say so in ``store_ae_titles`` / ``store_hosts``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pacsflow.config import SiteConfig

#: Addresses of this host as a peer sees them on the loopback interface.
_LOOPBACK = frozenset({"127.0.0.1", "::1"})


def _addresses(host: str) -> frozenset[str]:
    """Every IP address ``host`` resolves to; none when it does not resolve (now)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


@dataclass(frozen=True)
class AllowedPeers:
    """The calling AE titles and addresses the receiver accepts."""

    ae_titles: frozenset[str]
    addresses: frozenset[str]

    def refusal(self, calling_ae: str, address: str) -> str | None:
        """Why an association from ``calling_ae`` at ``address`` is refused, or None."""
        calling_ae = calling_ae.strip()
        if calling_ae not in self.ae_titles:
            return (
                f"calling AE title {calling_ae!r} is not a configured source; add it to the "
                "source's store_ae_titles if that source sends under another title"
            )
        if address not in self.addresses:
            return (
                f"address {address} is not a configured source's host; add it to the "
                "source's store_hosts if that source sends from another machine"
            )
        return None


def allowed_peers(site: SiteConfig) -> AllowedPeers:
    """The peers of ``site``'s receiver: every source, plus pacsflow's own checks."""
    titles = {site.receiver.ae_title}
    addresses = set(_LOOPBACK) | _addresses(site.receiver.host)
    for source in site.sources.values():
        titles.add(source.ae_title)
        titles.update(title.strip() for title in source.store_ae_titles)
        for host in (source.host, *source.store_hosts):
            addresses.update(_addresses(host))
    return AllowedPeers(frozenset(titles), frozenset(addresses))
