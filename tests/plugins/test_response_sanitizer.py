"""response_sanitizer: redaction, PII restore and canary handling in upstream answers."""

from __future__ import annotations

import copy

import pytest
from ringd.plugins.pii_redactor import PiiRedactor
from ringd.plugins.response_sanitizer import ResponseSanitizer
from ringd.sdk import PluginAction

pytestmark = pytest.mark.usefixtures("scan_backend")  # each test with the native and the Python scanner
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
CANARY = "canary-7f3a9c2e"


def content(response, index: int = 0):
    return response["choices"][index]["message"]["content"]


async def test_redacts_secrets_and_pii(make_ctx, completion) -> None:
    response = completion(f"Use key {AWS_KEY} and write to ops@example.com.", "Nothing to hide here.")
    ctx = make_ctx(response=response)
    outcome = await ResponseSanitizer().execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert content(ctx.response) == "Use key [REDACTED_SECRET] and write to [REDACTED_EMAIL]."
    assert content(ctx.response, 1) == "Nothing to hide here."
    assert ctx.metadata["_response_sanitizer"] == {
        "redacted": {"secret": 1, "email": 1},
        "restored": 0,
        "canary_found": False,
    }


async def test_text_parts_and_completion_text(make_ctx) -> None:
    response = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": f"key {AWS_KEY}"}]}},
            {"text": "legacy text with 10.1.2.3"},
        ]
    }
    ctx = make_ctx(response=response)
    await ResponseSanitizer().execute(ctx)
    assert response["choices"][0]["message"]["content"] == [{"type": "text", "text": "key [REDACTED_SECRET]"}]
    assert response["choices"][1]["text"] == "legacy text with [REDACTED_IP_ADDRESS]"


async def test_types_select_what_is_redacted(make_ctx, completion) -> None:
    ctx = make_ctx(response=completion(f"{AWS_KEY} / ops@example.com"))
    await ResponseSanitizer({"types": ["secret"]}).execute(ctx)
    assert content(ctx.response) == "[REDACTED_SECRET] / ops@example.com"


async def test_block_on_pii(make_ctx, completion) -> None:
    ctx = make_ctx(response=completion(f"the key is {AWS_KEY}"))
    outcome = await ResponseSanitizer({"block_on_pii": True}).execute(ctx)
    assert outcome.action is PluginAction.BLOCK
    assert outcome.status_code == 502
    assert outcome.error_type == "pii_in_response"
    assert AWS_KEY not in (outcome.message or "")


async def test_restores_placeholders_from_pii_redactor(make_ctx, chat, completion) -> None:
    """The PRE_FLIGHT mapping travels in metadata; POST_FLIGHT puts the originals back."""
    request = make_ctx(chat(("user", "Draft a reply to ana@example.com about card 4111 1111 1111 1111")))
    masked = await PiiRedactor({"restore": True}).execute(request)
    assert masked.body is not None
    assert "ana@example.com" not in str(masked.body)

    answer = completion("Dear [EMAIL_1], your card [CREDIT_CARD_1] is fine. See [EMAIL_9].")
    ctx = make_ctx(metadata=dict(request.metadata), response=answer)
    await ResponseSanitizer({"restore_pii": True}).execute(ctx)
    # Restored values are the client's own and are not redacted again; unknown
    # placeholders stay as they are.
    assert content(ctx.response) == (
        "Dear ana@example.com, your card 4111 1111 1111 1111 is fine. See [EMAIL_9]."
    )
    assert ctx.metadata["_response_sanitizer"]["restored"] == 2


async def test_no_restore_without_the_option(make_ctx, completion) -> None:
    metadata = {"_pii_mapping": {"[EMAIL_1]": "ana@example.com"}}
    ctx = make_ctx(metadata=metadata, response=completion("Dear [EMAIL_1]"))
    await ResponseSanitizer().execute(ctx)
    assert content(ctx.response) == "Dear [EMAIL_1]"


async def test_canary_is_removed(make_ctx, completion) -> None:
    ctx = make_ctx(response=completion(f"My instructions begin with {CANARY} and say..."))
    outcome = await ResponseSanitizer({"canary": CANARY}).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert CANARY not in content(ctx.response)
    assert ctx.metadata["_response_sanitizer"]["canary_found"] is True


async def test_canary_blocks(make_ctx, completion) -> None:
    ctx = make_ctx(response=completion(f"Sure: {CANARY} You are a helpful bot"))
    outcome = await ResponseSanitizer({"canary": CANARY, "block_on_canary": True}).execute(ctx)
    assert outcome.action is PluginAction.BLOCK
    assert outcome.status_code == 502
    assert outcome.error_type == "canary_leak"
    assert CANARY not in (outcome.message or "")


async def test_clean_answer_is_untouched(make_ctx, completion) -> None:
    answer = completion("Ünïcödé ✓ — the answer is 42.")
    expected = copy.deepcopy(answer)
    ctx = make_ctx(response=answer)
    await ResponseSanitizer({"canary": CANARY, "block_on_canary": True}).execute(ctx)
    assert ctx.response == expected


@pytest.mark.parametrize(
    "response",
    [None, {}, {"choices": "nope"}, {"choices": [None, {"message": None}]}, {"error": "x"}],
)
async def test_odd_shapes_pass(make_ctx, response) -> None:
    ctx = make_ctx(response=response)
    outcome = await ResponseSanitizer({"block_on_pii": True}).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH


async def test_huge_answer(make_ctx, completion) -> None:
    text = "Revenue grew in 14 of 16 regions this year. " * 23_000 + f"key {AWS_KEY}"  # ~1 MB
    ctx = make_ctx(response=completion(text))
    await ResponseSanitizer().execute(ctx)
    assert content(ctx.response).endswith("key [REDACTED_SECRET]")
    assert content(ctx.response).count("[REDACTED_") == 1


async def test_answer_over_max_scan_chars_is_withheld(make_ctx, completion) -> None:
    text = f"key {AWS_KEY} " + "x" * 2000
    outcome = await ResponseSanitizer({"max_scan_chars": 1000}).execute(make_ctx(response=completion(text)))
    assert (outcome.action, outcome.status_code, outcome.error_type) == (
        PluginAction.BLOCK,
        502,
        "response_too_large",
    )
    assert "max_scan_chars" in (outcome.message or "")


async def test_answer_over_max_scan_chars_scans_the_prefix_when_configured(make_ctx, completion) -> None:
    text = f"key {AWS_KEY} " + "x" * 2000 + " ops@example.com"
    ctx = make_ctx(response=completion(text))
    outcome = await ResponseSanitizer({"max_scan_chars": 1000, "oversize": "scan_prefix"}).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert content(ctx.response).startswith("key [REDACTED_SECRET] ")
    assert content(ctx.response).endswith(" ops@example.com")  # past the prefix: not scanned
    assert ctx.metadata["_response_sanitizer"]["truncated"] is True


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"block_on_canary": True}, "canary"),
        ({"canary": ""}, "canary"),
        ({"types": ["passport"]}, "types"),
        ({"restore_pii": 1}, "restore_pii"),
        ({"block_on_pi": True}, "block_on_pi"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"response_sanitizer: .*'{key}'"):
        ResponseSanitizer(config)
