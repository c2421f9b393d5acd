"""How a generation's finish_reason reads in the Responses API."""

from __future__ import annotations

from api.responses_output import Outcome


def test_each_finish_reason_has_its_response_status() -> None:
    assert Outcome.of("stop", None) == Outcome("completed")
    assert Outcome.of("stop", "###") == Outcome("completed")
    length = Outcome.of("length", None)
    assert (length.status, length.incomplete_details) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert length.item_status == "incomplete"
    paused = Outcome.of("abort", None)  # POST /pause with mode abort cut it short
    assert (paused.status, paused.incomplete_details, paused.item_status) == (
        "incomplete",
        None,
        "incomplete",
    )
    failed = Outcome.of("error", "grammar too complex")
    assert failed.status == "failed"
    assert failed.error == {"code": "server_error", "message": "grammar too complex"}
