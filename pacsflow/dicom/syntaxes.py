"""The transfer syntaxes we accept instances in, Explicit VR Little Endian first.

In association negotiation the *acceptor's* order decides which of the offered syntaxes a
context gets (pynetdicom, like most toolkits, takes the first of its own list that the
requestor offers). pynetdicom's ``ALL_TRANSFER_SYNTAXES`` starts with Implicit VR Little
Endian, so an acceptor listing it as is makes every source that offers both send
implicit VR: a source holding explicit-VR files re-encodes each instance (6 ms of a
one-instance C-MOVE from the sandbox PACS, measured), and the files we stage lose the VR
of every private element, which a reader then sees as UN. With Explicit VR Little Endian
first we keep what the source stores whenever it can send it, and still accept anything.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES

#: Every syntax pynetdicom knows, Explicit VR Little Endian first.
RECEIVED_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    *(uid for uid in ALL_TRANSFER_SYNTAXES if uid != ExplicitVRLittleEndian),
]
