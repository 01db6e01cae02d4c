"""The DICOM destination: C-STORE to a DICOM node, verified by C-FIND at IMAGE level.

A study is split between ``workers`` associations (one association must not carry
concurrent requests, and pynetdicom has no asynchronous operations), each in a process of
its own from a pool kept for the life of the worker (:mod:`.sender_processes` says why
threads were not enough). Every association sets TCP_NODELAY (:mod:`pacsflow.dicom.network`);
optionally it runs over DICOM TLS. Instances are keyed by SOP Instance UID at the node:
sending one again replaces it, so a retry never duplicates.

Outcomes as the issue asks (PS3.4 Annex B.2.3 for the C-STORE statuses): a node that
cannot be reached, aborts, times out, rejects the association transiently or answers
"out of resources" (0xA7xx) raises :class:`RetriableError`; a permanent association
rejection (an AE title it does not know), a SOP class it does not accept or any other
failure status raises :class:`PermanentError` with what to change.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from pynetdicom.status import code_to_category

from pacsflow.config import DicomDestinationConfig, DicomTlsConfig
from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.factory import register
from pacsflow.export.protocol import ExportReceipt
from pacsflow.export.sender_processes import run_in_processes
from pacsflow.export.verification import Instance, deliver, read_instances

LOGGER = logging.getLogger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128  # PS3.8 Section 9.3.2.2: context IDs are odd numbers 1-255


def _ssl_context(tls: DicomTlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    context.check_hostname = tls.check_hostname
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def _transfer_syntaxes(syntax: str) -> list[str]:
    """The file's own transfer syntax, plus the other uncompressed one when it is one."""
    if syntax in _UNCOMPRESSED:
        return [syntax, *(s for s in _UNCOMPRESSED if s != syntax)]
    return [syntax]


def _contexts(instances: Sequence[Instance]) -> dict[str, list[str]]:
    """SOP class -> transfer syntaxes to propose for it, in the order first seen."""
    wanted: dict[str, list[str]] = {}
    for instance in instances:
        syntaxes = wanted.setdefault(instance.sop_class_uid, [])
        for syntax in _transfer_syntaxes(instance.transfer_syntax_uid):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return wanted


def _chunked_sending() -> None:
    """Send files as they are on disk instead of decoding and re-encoding each one.

    pynetdicom reads a whole file into a Dataset and encodes it again unless this
    setting is on; sending the encoded bytes in PDU-sized chunks is what dcmtk's
    storescu does. It only changes how files given by path are sent (which is how
    pacsflow sends), never what is received.
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


@register(DicomDestinationConfig)
class DicomDestination:
    """A DICOM node that stores what we C-STORE and answers C-FIND about it."""

    def __init__(self, config: DicomDestinationConfig) -> None:
        self.config = config
        self._tls_args = (_ssl_context(config.tls), config.host) if config.tls is not None else None

    def describe(self) -> str:
        c = self.config
        return f"DICOM node {c.ae_title} at {c.host}:{c.port}"

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt:
        location = f"dicom://{self.config.ae_title}@{self.config.host}:{self.config.port}"
        return deliver(self, read_instances(study_dir), pseudo_study, location)

    # -- the InstanceStore side (see pacsflow.export.verification) --------------------

    def send(self, instances: Sequence[Instance]) -> None:
        """C-STORE ``instances``, split round-robin over ``workers`` associations."""
        _chunked_sending()
        contexts = _contexts(instances)
        if sum(len(s) for s in contexts.values()) > _MAX_CONTEXTS:
            raise PermanentError(
                f"the study needs more than {_MAX_CONTEXTS} presentation contexts "
                f"({len(contexts)} SOP classes); it cannot go over one association"
            )
        workers = min(self.config.workers, len(instances))
        shares = [instances[n::workers] for n in range(workers)]
        if workers == 1:
            self._send_share(shares[0], contexts)
            return
        calls = [(self.config, share, contexts) for share in shares]
        run_in_processes(self.config.workers, _send_share_in_process, calls)

    def held(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the study at the node (C-FIND, Study Root, IMAGE level)."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        found = {str(answer.get("SOPInstanceUID", "")) for answer in self._find(query)}
        found.discard("")
        return found

    def count(self, study_uid: str) -> int | None:
        """Instances of the study at the node, from a STUDY-level C-FIND.

        NumberOfStudyRelatedInstances is an optional return key (PS3.4 C.6.2.1.2): None
        when the node leaves it empty, or does not answer with exactly this one study.
        """
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.NumberOfStudyRelatedInstances = None
        answers = self._find(query)
        if len(answers) != 1 or str(answers[0].get("StudyInstanceUID", "")) != study_uid:
            return None
        try:
            return int(answers[0].get("NumberOfStudyRelatedInstances"))
        except (TypeError, ValueError):  # empty (None), or not one number
            return None

    def _find(self, query: Dataset) -> list[Dataset]:
        """The identifiers a Study Root C-FIND answers to ``query``."""
        found: list[Dataset] = []
        with self._association({StudyRootQueryRetrieveInformationModelFind: []}) as assoc:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                if not status or "Status" not in status:
                    raise RetriableError(
                        f"{self.describe()} stopped answering the C-FIND (aborted or timed out)"
                    )
                category = code_to_category(int(status.Status))
                if category == "Pending" and identifier is not None:
                    found.append(identifier)
                elif category in ("Failure", "Cancel"):
                    raise RetriableError(
                        f"{self.describe()} answered the {query.QueryRetrieveLevel}-level "
                        f"C-FIND with status 0x{int(status.Status):04X}; it must allow C-FIND "
                        f"from {self.config.calling_ae_title} to verify deliveries"
                    )
        return found

    # -- associations -----------------------------------------------------------------

    @contextmanager
    def _association(self, contexts: dict[str, list[str]]) -> Iterator[Association]:
        c = self.config
        ae = make_ae(c.calling_ae_title, c.timeout)
        for sop_class, syntaxes in contexts.items():
            if not syntaxes:  # C-FIND: pynetdicom's default transfer syntaxes
                ae.add_requested_context(sop_class)
            # One context per transfer syntax: a node accepts one syntax per context, and
            # a file is sent in its own syntax (as dcmtk's storescu proposes them too).
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, [syntax])
        try:
            assoc = ae.associate(
                c.host,
                c.port,
                ae_title=c.ae_title,
                evt_handlers=NODELAY_HANDLERS,
                tls_args=self._tls_args,
            )
        except ssl.SSLError as exc:
            raise PermanentError(
                f"TLS with {self.describe()} failed ({exc.reason or exc}); check the tls "
                "settings (ca_file, cert_file, key_file) of the destination"
            ) from None
        except OSError as exc:
            raise RetriableError(f"could not connect to {self.describe()}: {exc}") from None
        if not assoc.is_established:
            raise self._not_established(assoc, contexts)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _not_established(self, assoc: Association, contexts: dict[str, list[str]]) -> Exception:
        c = self.config
        if getattr(assoc.acceptor.primitive, "result", None) == 0x00:
            # Accepted, but with no presentation context: pynetdicom aborts it then.
            return self._refused_classes(sorted(contexts))
        if assoc.is_rejected:
            primitive = assoc.acceptor.primitive
            result = getattr(primitive, "result", None)
            reason = getattr(primitive, "reason_str", "unknown reason")
            if result == 0x02:
                return RetriableError(
                    f"{self.describe()} rejected the association for now: {reason}"
                )
            return PermanentError(
                f"{self.describe()} rejected the association ({reason}); check that its AE "
                f"title is {c.ae_title!r} and that it accepts our AE title "
                f"{c.calling_ae_title!r} (destination settings ae_title, calling_ae_title)"
            )
        return RetriableError(
            f"could not associate with {self.describe()} (connection refused, aborted or timed out)"
        )

    def _refused_classes(self, sop_classes: list[str]) -> PermanentError:
        names = ", ".join(f"{UID(uid).name} ({uid})" for uid in sop_classes)
        return PermanentError(
            f"{self.describe()} does not accept {names}; ask its administrator to allow "
            "these SOP classes, or filter those series out of the project"
        )

    def _send_share(self, share: Sequence[Instance], contexts: dict[str, list[str]]) -> None:
        with self._association(contexts) as assoc:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            refused = sorted(set(contexts) - accepted)
            if refused:
                raise self._refused_classes(refused)
            for instance in share:
                self._store(assoc, instance)

    def _store(self, assoc: Association, instance: Instance) -> None:
        try:
            status = assoc.send_c_store(instance.path)
        except ValueError as exc:  # no accepted context for this transfer syntax
            raise PermanentError(
                f"{self.describe()} accepts none of the transfer syntaxes offered for "
                f"{UID(instance.sop_class_uid).name}: {exc}"
            ) from None
        if not status or "Status" not in status:
            raise RetriableError(
                f"{self.describe()} stopped answering during the C-STORE (aborted or timed out)"
            )
        code = int(status.Status)
        category = code_to_category(code)
        if category in ("Success", "Warning"):
            return
        if 0xA700 <= code <= 0xA7FF:
            raise RetriableError(f"{self.describe()} is out of resources (status 0x{code:04X})")
        raise PermanentError(
            f"{self.describe()} refused an instance of {UID(instance.sop_class_uid).name} "
            f"with C-STORE status 0x{code:04X} ({category}); its log says why"
        )


def _send_share_in_process(
    config: DicomDestinationConfig, share: Sequence[Instance], contexts: dict[str, list[str]]
) -> None:
    """In a sender process: C-STORE ``share`` over an association of this process's own."""
    _chunked_sending()
    DicomDestination(config)._send_share(share, contexts)
