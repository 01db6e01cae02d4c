"""Export de-identified studies to a project's destination, exactly once, verified.

One module per destination type (``filesystem``, ``dicom``, ``dicomweb``, ``ftps``);
each registers itself with :func:`~pacsflow.export.factory.register`, so importing this
package makes every type available to :func:`make_destination`.
"""

from pacsflow.export import dicom, dicomweb, filesystem, ftps
from pacsflow.export.dicom import DicomDestination
from pacsflow.export.dicomweb import DicomwebDestination
from pacsflow.export.factory import make_destination, register
from pacsflow.export.filesystem import FilesystemDestination
from pacsflow.export.ftps import FtpsDestination
from pacsflow.export.protocol import Destination, ExportReceipt, FileDestination
from pacsflow.export.verification import DeliveryIncomplete

__all__ = [
    "DeliveryIncomplete",
    "Destination",
    "DicomDestination",
    "DicomwebDestination",
    "ExportReceipt",
    "FileDestination",
    "FilesystemDestination",
    "FtpsDestination",
    "dicom",
    "dicomweb",
    "filesystem",
    "ftps",
    "make_destination",
    "register",
]
