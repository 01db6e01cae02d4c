"""The DICOMweb destination: STOW-RS in batches, verified by QIDO-RS (PS3.18 10.5, 10.6).

Sending and searching go through the ``dicomweb-client`` library, with its own retries
switched off: retries happen at one layer only, the Prefect task, which retries
:class:`RetriableError`. An archive keys instances by SOP Instance UID, so storing one
again does not duplicate it.

HTTP outcomes: no connection, a timeout, 408, 429 and 5xx are retriable; 401 and 403
(authentication) and other 4xx answers are permanent. A STOW-RS answer listing failed
instances (202 or 409, FailedSOPSequence, PS3.18 Table 10.5.3-1) is retriable when every
reason is "out of resources" (0xA7xx) and permanent otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction
from pydicom import Dataset

from pacsflow.config import DicomwebDestinationConfig
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.factory import register
from pacsflow.export.parallel import run_all
from pacsflow.export.protocol import ExportReceipt
from pacsflow.export.verification import Instance, deliver, read_instances

LOGGER = logging.getLogger(__name__)

_SOP_INSTANCE_UID = "00080018"
_STUDY_INSTANCE_UID = "0020000D"
_NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
_QIDO_PAGE = 1000
_RETRIABLE_HTTP = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS}


def _session(config: DicomwebDestinationConfig) -> requests.Session:
    session = requests.Session()
    if config.username and config.password:
        session.auth = (config.username, config.password.get_secret_value())
    if config.token is not None:
        session.headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
    if config.ca_file is not None:
        session.verify = str(config.ca_file)
    return session


def _failure_reasons(response: Dataset) -> list[int]:
    return [int(item.get("FailureReason", 0)) for item in response.get("FailedSOPSequence", [])]


class _FileStowClient(DICOMwebClient):
    """A DICOMwebClient that stores DICOM files as they are on disk.

    ``store_instances`` takes pydicom Datasets and encodes each again before sending:
    23 ms for a 512 KB CT here, more than the upload itself. Our files are already
    DICOM Part 10, so their bytes go unchanged into the library's own multipart STOW-RS
    request. This leans on two internals of dicomweb-client (checked with 0.61); the
    integration tests fail if they change.
    """

    def store_files(self, paths: Sequence[Path]) -> Dataset:
        url = self._get_studies_url(_Transaction.STORE)
        return self._http_post_multipart_application_dicom(url, [p.read_bytes() for p in paths])


@register(DicomwebDestinationConfig)
class DicomwebDestination:
    """A DICOMweb archive (STOW-RS to store, QIDO-RS to count)."""

    def __init__(self, config: DicomwebDestinationConfig) -> None:
        self.config = config

    def describe(self) -> str:
        return f"DICOMweb archive {self.config.url}"

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt:
        location = f"{self.config.url.rstrip('/')}/studies/{pseudo_study}"
        return deliver(self, read_instances(study_dir), pseudo_study, location)

    @contextmanager
    def _client(self) -> Iterator[_FileStowClient]:
        session = _session(self.config)
        try:
            client = _FileStowClient(
                self.config.url.rstrip("/"), session=session, timeout=self.config.timeout
            )
            client.set_http_retry_params(retry=False)
            yield client
        except requests.HTTPError as exc:
            raise self._http_error(exc.response) from None
        except requests.RequestException as exc:
            raise RetriableError(
                f"could not reach {self.describe()}: {type(exc).__name__}"
            ) from None
        finally:
            session.close()

    def send(self, instances: Sequence[Instance]) -> None:
        """STOW-RS ``instances`` in batches of ``batch_size``, ``workers`` requests at once.

        One request at a time leaves the archive idle while the next batch is read and
        sent, and the sender idle while the archive stores: two at once sent 1.3x the
        instances per second of one to Orthanc. Batches go round-robin to the workers,
        each with its own HTTP session; all end before the first failure is raised.
        """
        size = self.config.batch_size
        batches = [instances[start : start + size] for start in range(0, len(instances), size)]
        workers = min(self.config.workers, len(batches))
        if workers <= 1:
            self._send_batches(batches)
            return
        shares = [(batches[n::workers],) for n in range(workers)]
        run_all(self._send_batches, shares, name="pacsflow-stow")

    def _send_batches(self, batches: Sequence[Sequence[Instance]]) -> None:
        with self._client() as client:
            for batch in batches:
                answer = client.store_files([i.path for i in batch])
                self._check(_failure_reasons(answer), len(batch))

    def held(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the study in the archive (QIDO-RS, paged)."""
        found: set[str] = set()
        with self._client() as client:
            offset = 0
            while True:
                try:
                    page = client.search_for_instances(
                        study_instance_uid=study_uid,
                        fields=[_SOP_INSTANCE_UID],
                        limit=_QIDO_PAGE,
                        offset=offset,
                    )
                except requests.HTTPError as exc:
                    if exc.response is not None and exc.response.status_code == 404:
                        return found  # some archives answer 404 for a study they lack
                    raise
                before = len(found)
                for item in page:
                    found.update(item.get(_SOP_INSTANCE_UID, {}).get("Value", []))
                # Stop on a short page, and on one that added nothing (an archive that
                # ignores offset would otherwise send the same page forever).
                if len(page) < _QIDO_PAGE or len(found) == before:
                    return found
                offset += len(page)

    def count(self, study_uid: str) -> int | None:
        """Instances of the study in the archive, from its QIDO-RS study-level answer.

        NumberOfStudyRelatedInstances is a default return attribute of a study search
        (PS3.18 Table 10.6.3-3); None when the archive leaves it out or has no such study.
        """
        with self._client() as client:
            try:
                studies = client.search_for_studies(
                    search_filters={_STUDY_INSTANCE_UID: study_uid},
                    fields=[_NUMBER_OF_STUDY_RELATED_INSTANCES],
                )
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return None
                raise
        values = [s.get(_NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value") for s in studies]
        if len(values) != 1 or not values[0]:
            return None
        try:
            return int(values[0][0])
        except (TypeError, ValueError):
            return None

    def _check(self, reasons: list[int], batch: int) -> None:
        if not reasons:
            return
        codes = ", ".join(sorted({f"0x{r:04X}" for r in reasons}))
        if all(0xA700 <= r <= 0xA7FF for r in reasons):
            raise RetriableError(
                f"{self.describe()} is out of resources: {len(reasons)} of {batch} instances "
                f"not stored ({codes})"
            )
        raise PermanentError(
            f"{self.describe()} refused {len(reasons)} of {batch} instances (FailureReason "
            f"{codes}); its log says why (0x0122: SOP class not supported)"
        )

    def _http_error(self, response: requests.Response | None) -> Exception:
        if response is None:
            return RetriableError(f"{self.describe()} gave no HTTP answer")
        code = response.status_code
        if code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            return PermanentError(
                f"{self.describe()} refused our credentials (HTTP {code}); check the "
                "destination's username and password, or token"
            )
        if code >= 500 or code in _RETRIABLE_HTTP:
            return RetriableError(f"{self.describe()} answered HTTP {code}; it may be busy")
        reasons = []
        if code == HTTPStatus.CONFLICT and response.content:
            try:
                reasons = _failure_reasons(Dataset.from_json(response.json()))
            except ValueError:
                reasons = []
        if reasons and all(0xA700 <= r <= 0xA7FF for r in reasons):
            return RetriableError(f"{self.describe()} is out of resources (HTTP {code})")
        return PermanentError(
            f"{self.describe()} rejected the request (HTTP {code}); check the destination "
            "url, and that the archive accepts STOW-RS and QIDO-RS there"
        )
