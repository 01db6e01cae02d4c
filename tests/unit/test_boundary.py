"""Library errors that may quote patient data stop at the Prefect boundary."""

from __future__ import annotations

import pytest

from flows.boundary import StudyStepFailed, confined
from pacsflow.errors import RetriableError


def test_a_library_error_is_recorded_in_full_and_replaced_by_a_clean_one():
    recorded = []
    with pytest.raises(StudyStepFailed) as info, confined("de-identify", recorded.append):
        raise ValueError("Invalid value for VR PN: 'DOE^JANE' (MRN0012345)")
    assert recorded == ["de-identify: ValueError: Invalid value for VR PN: 'DOE^JANE' (MRN0012345)"]
    message = str(info.value)
    assert message.startswith("de-identify failed with ValueError")
    assert "DOE" not in message and "MRN0012345" not in message
    assert info.value.__suppress_context__  # tracebacks do not show the original either


def test_our_own_errors_pass_unchanged_so_retries_still_see_them():
    recorded = []
    with (
        pytest.raises(RetriableError, match="source VNA refused"),
        confined("find", recorded.append),
    ):
        raise RetriableError("source VNA refused the association")
    assert recorded == []
