"""pii_redactor: masking, blocking and restoring personal data and secrets in prompts."""

from __future__ import annotations

import copy
import json
import time

import pytest
from ringd.plugins._detect import Detector, iban_valid, luhn_valid
from ringd.plugins._seal import is_sealed, open_sealed, parse_key
from ringd.plugins.pii_redactor import PiiRedactor
from ringd.sdk import PluginAction

pytestmark = pytest.mark.usefixtures("scan_backend")  # each test with the native and the Python scanner
PII_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def opened_mapping(ctx) -> dict[str, str]:
    """The sealed ``_pii_mapping`` of ``ctx`` opened with the test key (never in clear)."""
    sealed = ctx.metadata["_pii_mapping"]
    assert is_sealed(sealed)
    return open_sealed(sealed, key=parse_key(PII_KEY, "test key"), request_id=ctx.request_id)


GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 4
OPENAI_KEY = "sk-proj-" + "Zx9Yw8Vu7T" * 3
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1\nq2w3e4r5\n-----END RSA PRIVATE KEY-----"


def kinds_found(text: str) -> list[tuple[str, str]]:
    return [(finding.kind, finding.value) for finding in Detector().find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ana.lopez+work@example.co.uk today", [("email", "ana.lopez+work@example.co.uk")]),
        ("Grüße an jürgen@müller.de!", [("email", "jürgen@müller.de")]),
        ("call +1 (555) 123-4567 now", [("phone", "+1 (555) 123-4567")]),
        ("UK office: +44 20 7946 0958.", [("phone", "+44 20 7946 0958")]),
        ("mobile 555.123.4567", [("phone", "555.123.4567")]),
        ("card 4111 1111 1111 1111 exp 12/27", [("credit_card", "4111 1111 1111 1111")]),
        ("card 5555-5555-5555-4444", [("credit_card", "5555-5555-5555-4444")]),
        ("IBAN DE89 3704 0044 0532 0130 00.", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("pay GB82WEST12345698765432 now", [("iban", "GB82WEST12345698765432")]),
        ("host 192.168.10.42 is down", [("ip_address", "192.168.10.42")]),
        (
            "v6 2001:db8::8a2e:370:7334 and fe80::1",
            [
                ("ip_address", "2001:db8::8a2e:370:7334"),
                ("ip_address", "fe80::1"),
            ],
        ),
        (f"token {GITHUB_TOKEN} here", [("secret", GITHUB_TOKEN)]),
        (f"OPENAI_API_KEY={OPENAI_KEY}", [("secret", OPENAI_KEY)]),
        ("aws AKIAIOSFODNN7EXAMPLE key", [("secret", "AKIAIOSFODNN7EXAMPLE")]),
        ("Authorization: Bearer abcDEF0123456789xyz.tok", [("secret", "abcDEF0123456789xyz.tok")]),
        ('{"password": "hunter2024!"}', [("secret", "hunter2024!")]),
        (f"key:\n{PEM}\nend", [("secret", PEM)]),
    ],
)
def test_detects_each_kind(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds_found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN DE89 3704 0044 0532 0130 01 fails mod-97",
        "not an address: 10.0.0.256, nor a version v1.2.3.4.5",
        "times 12:30:45, C++ std::vector, MAC aa:bb:cc:dd:ee:ff",
        "dates 2024-01-15 and 12/31/2024, pi 3.14159265, order 12345678",
        "a million is 1 000 000",
        "the password: is required, but forgotten",
        "bare@host and @mention and user@localhost",
        "all zeros 0000 0000 0000 0000",
        "",
    ],
)
def test_leaves_lookalikes_alone(text: str) -> None:
    assert kinds_found(text) == []


def test_checksums() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89")


def test_find_all_matches_find_per_text() -> None:
    texts = [
        "mail a@example.com",
        "",
        "call +1 555 123 4567 or 4111-1111-1111-1111",
        "x" * 50,
        "ip 10.1.2.3",
    ]
    detector = Detector()
    assert detector.find_all(texts) == [detector.find(text) for text in texts]


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="ssn"):
        Detector(["ssn"])


async def test_masks_with_stable_placeholders(make_ctx, chat) -> None:
    body = chat(
        ("system", "Support bot."),
        ("user", "I am ana@example.com, card 4111 1111 1111 1111, server 10.0.0.7."),
        ("assistant", "Noted, ana@example.com."),
        ("user", "My colleague is bo@example.com; card again: 4111111111111111"),
    )
    original = copy.deepcopy(body)
    ctx = make_ctx(body)
    outcome = await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(ctx)

    assert outcome.action is PluginAction.MODIFY
    assert outcome.body is not None
    contents = [message["content"] for message in outcome.body["messages"]]
    assert contents[1] == "I am [EMAIL_1], card [CREDIT_CARD_1], server [IP_ADDRESS_1]."
    assert contents[2] == "Noted, [EMAIL_1]."
    # Another address gets the next number; the card written without spaces is the same card.
    assert contents[3] == "My colleague is [EMAIL_2]; card again: [CREDIT_CARD_1]"
    assert ctx.metadata["pii_counts"] == {"email": 3, "credit_card": 2, "ip_address": 1}
    assert "ana@example.com" not in str(ctx.metadata)  # the mapping travels sealed
    assert opened_mapping(ctx) == {
        "[EMAIL_1]": "ana@example.com",
        "[CREDIT_CARD_1]": "4111 1111 1111 1111",
        "[IP_ADDRESS_1]": "10.0.0.7",
        "[EMAIL_2]": "bo@example.com",
    }
    json.dumps(ctx.metadata)  # metadata stays JSON
    assert body == original  # the caller's body is not edited in place


async def test_mapping_only_with_restore(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "mail me at ana@example.com")))
    outcome = await PiiRedactor().execute(ctx)
    assert outcome.action is PluginAction.MODIFY
    assert "_pii_mapping" not in ctx.metadata


async def test_multimodal_parts(make_ctx, chat) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}
    body = chat(
        ("user", [{"type": "text", "text": "Who owns ana@example.com?"}, image]),
    )
    outcome = await PiiRedactor().execute(make_ctx(body))
    assert outcome.body is not None
    parts = outcome.body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "Who owns [EMAIL_1]?"}
    assert parts[1] == image


async def test_existing_placeholder_numbers_are_skipped(make_ctx, chat) -> None:
    body = chat(("user", "Template says [EMAIL_1]; the real one is ana@example.com"))
    ctx = make_ctx(body)
    outcome = await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(ctx)
    assert outcome.body is not None
    assert outcome.body["messages"][0]["content"] == ("Template says [EMAIL_1]; the real one is [EMAIL_2]")
    assert opened_mapping(ctx) == {"[EMAIL_2]": "ana@example.com"}


async def test_block_mode(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", f"deploy with {GITHUB_TOKEN} please, ping ana@example.com")))
    outcome = await PiiRedactor({"mode": "block"}).execute(ctx)
    assert outcome.action is PluginAction.BLOCK
    assert outcome.status_code == 400
    assert outcome.error_type == "pii_detected"
    assert outcome.message is not None
    assert "secret" in outcome.message
    assert "email" in outcome.message
    assert GITHUB_TOKEN not in outcome.message
    assert "ana@example.com" not in outcome.message
    assert ctx.metadata["pii_counts"] == {"secret": 1, "email": 1}


async def test_types_limit_what_is_masked(make_ctx, chat) -> None:
    body = chat(("user", "ana@example.com, +1 (555) 123-4567"))
    outcome = await PiiRedactor({"types": ["phone"]}).execute(make_ctx(body))
    assert outcome.body is not None
    assert outcome.body["messages"][0]["content"] == "ana@example.com, [PHONE_1]"


async def test_roles_limit_what_is_scanned(make_ctx, chat) -> None:
    body = chat(("system", "escalate to ops@example.com"), ("user", "I am ana@example.com"))
    outcome = await PiiRedactor({"roles": ["user"]}).execute(make_ctx(body))
    assert outcome.body is not None
    assert outcome.body["messages"][0]["content"] == "escalate to ops@example.com"
    assert outcome.body["messages"][1]["content"] == "I am [EMAIL_1]"


async def test_legacy_prompt_field(make_ctx) -> None:
    outcome = await PiiRedactor().execute(make_ctx({"model": "m", "prompt": "to ana@example.com"}))
    assert outcome.body == {"model": "m", "prompt": "to [EMAIL_1]"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "m"},
        {"messages": []},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": []}]},
        {"messages": ["not a message", 42, {"role": "user"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": "Ünïcödé ✓ 日本語のテキスト, no PII"}]},
    ],
)
async def test_nothing_to_mask(make_ctx, body) -> None:
    ctx = make_ctx(body)
    outcome = await PiiRedactor().execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert ctx.metadata["pii_counts"] == {}


async def test_huge_body(make_ctx, chat) -> None:
    filler = "The quarterly report covers 12 regions and 340 stores. " * 19_000  # ~1 MB
    body = chat(("user", filler + "Contact ana@example.com or +44 20 7946 0958."))
    assert len(json.dumps(body)) > 1_000_000
    started = time.perf_counter()
    outcome = await PiiRedactor().execute(make_ctx(body))
    elapsed = time.perf_counter() - started
    assert outcome.body is not None
    assert outcome.body["messages"][0]["content"].endswith("Contact [EMAIL_1] or [PHONE_1].")
    # Linear: a quadratic scan of 1 MB would take minutes. The bound is that far from the
    # ~0.2 s a linear scan takes, so a busy machine cannot fail it and a regression cannot pass.
    assert elapsed < 30.0


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN RSA PRIVATE KEY-----" * 32_000,
        "password=" * 110_000,
        "1 " * 500_000,
        ":" * 1_000_000,
        "a@" * 500_000,
        "x@" + "a." * 500_000,
        "eyJaaaaaaaaaa." * 70_000,
    ],
    ids=["pem-heads", "assignments", "digits", "colons", "ats", "labels", "jwt-ish"],
)
def test_adversarial_megabyte_stays_linear(text: str) -> None:
    started = time.perf_counter()
    Detector().find(text)
    # Linear scans take well under a second; a quadratic one would take hours (a bound far from
    # both, so a busy machine cannot fail it).
    assert time.perf_counter() - started < 30.0


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"mode": "redact"}, "mode"),
        ({"types": ["email", "ssn"]}, "types"),
        ({"types": "email,phone"}, "types"),
        ({"restore": "yes"}, "restore"),
        ({"roles": [1]}, "roles"),
        ({"mdoe": "mask"}, "mdoe"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"pii_redactor: .*'{key}'"):
        PiiRedactor(config)


# --------------------------------------------------------------------------- big inputs and sealing


async def test_long_text_scanned_in_windows_finds_what_one_scan_finds() -> None:
    """Values on and near every window boundary are found whole, once, at the same offsets."""
    from ringd.plugins._detect import SCAN_CHUNK_CHARS, find_all_yielding

    values = ["ana@example.com", "4111 1111 1111 1111", "+44 20 7946 0958", "10.0.0.7", OPENAI_KEY]
    pieces = []
    length = 0
    index = 0
    while length < 5 * SCAN_CHUNK_CHARS:
        # Land a value across each boundary at varying offsets, and filler in between.
        boundary = (length // SCAN_CHUNK_CHARS + 1) * SCAN_CHUNK_CHARS
        gap = max(1, boundary - length - 7 - index % 11)
        filler = ("lorem ipsum dolor sit amet " * (gap // 27 + 1))[:gap]
        value = values[index % len(values)]
        pieces.append(f"{filler} {value} ")
        length += len(pieces[-1])
        index += 1
    text = "".join(pieces)
    whole = Detector().find(text)
    windowed = (await find_all_yielding(Detector(), [text]))[0]
    assert [(f.kind, f.start, f.end) for f in windowed] == [(f.kind, f.start, f.end) for f in whole]
    assert len(whole) >= 5


async def test_prompt_over_max_scan_chars_is_blocked_413(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "mail ana@example.com " + "x" * 5000)))
    outcome = await PiiRedactor({"max_scan_chars": 1000}).execute(ctx)
    assert (outcome.action, outcome.status_code, outcome.error_type) == (
        PluginAction.BLOCK,
        413,
        "prompt_too_large",
    )
    assert "max_scan_chars" in (outcome.message or "")


async def test_prompt_over_max_scan_chars_masks_the_prefix_and_flags_it(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "mail ana@example.com"), ("user", "y" * 5000 + " bo@example.com")))
    outcome = await PiiRedactor({"max_scan_chars": 1000, "oversize": "scan_prefix"}).execute(ctx)
    assert outcome.body is not None
    assert outcome.body["messages"][0]["content"] == "mail [EMAIL_1]"
    assert outcome.body["messages"][1]["content"].endswith(" bo@example.com")  # not scanned
    assert ctx.metadata["pii_scan_truncated"] is True


async def test_sealed_mapping_refuses_tampering_other_keys_and_other_requests(make_ctx, chat) -> None:
    from ringd.plugins._seal import SealError

    ctx = make_ctx(chat(("user", "mail ana@example.com")), request_id="req-1")
    await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(ctx)
    sealed = ctx.metadata["_pii_mapping"]
    key = parse_key(PII_KEY, "test key")
    assert open_sealed(sealed, key=key, request_id="req-1") == {"[EMAIL_1]": "ana@example.com"}
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    other_key = bytes(32)
    for token, use_key, request_id in (
        (flipped, key, "req-1"),
        (sealed, other_key, "req-1"),
        (sealed, key, "req-2"),
        ({"[EMAIL_1]": "ana@example.com"}, key, "req-1"),  # a mapping in clear is refused
    ):
        with pytest.raises(SealError) as caught:
            open_sealed(token, key=use_key, request_id=request_id)
        assert "ana@example.com" not in str(caught.value)


async def test_key_from_environment_is_shared_by_processes(make_ctx, chat, monkeypatch) -> None:
    monkeypatch.setenv("RINGD_PII_KEY", PII_KEY)
    ctx = make_ctx(chat(("user", "mail ana@example.com")))
    await PiiRedactor({"restore": True}).execute(ctx)
    assert opened_mapping(ctx) == {"[EMAIL_1]": "ana@example.com"}


@pytest.mark.parametrize("bad", ["short", "00" * 31, "not base64 at all!" * 3])
def test_bad_key_is_refused_naming_its_source(bad, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"pii_redactor: config 'pii_key' must be a 32-byte key"):
        PiiRedactor({"restore": True, "pii_key": bad})
    monkeypatch.setenv("RINGD_PII_KEY", bad)
    with pytest.raises(ValueError, match=r"environment variable RINGD_PII_KEY must be a 32-byte key"):
        PiiRedactor({"restore": True})


async def test_missing_key_warns_that_replicas_need_one(make_ctx, chat, caplog, monkeypatch) -> None:
    monkeypatch.delenv("RINGD_PII_KEY", raising=False)
    ctx = make_ctx(chat(("user", "mail ana@example.com")))
    await PiiRedactor({"restore": True}).execute(ctx)
    assert "RINGD_PII_KEY" in caplog.text
    assert "replicas" in caplog.text
    assert is_sealed(ctx.metadata["_pii_mapping"])


@pytest.mark.parametrize(
    "mapping",
    [
        {},
        {"[EMAIL_1]": "jürgen@müller.de", "[PHONE_1]": "+49 30 1234567"},
        {"[SECRET_1]": "sk-\u2028line-separator-✓-🚀"},
        {"[EMAIL_1]": "lone \ud800 surrogate@example.com"},  # orjson refuses it: json seals it
    ],
    ids=["empty", "non-ascii", "separators-emoji", "lone-surrogate"],
)
def test_a_sealed_mapping_opens_to_what_was_sealed(mapping: dict[str, str]) -> None:
    from ringd.plugins._seal import seal

    key = parse_key(PII_KEY, "test key")
    assert open_sealed(seal(mapping, key=key, request_id="req-9"), key=key, request_id="req-9") == mapping


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 8, 9, 40])
async def test_masking_in_chunks_gives_what_one_pass_gives(make_ctx, chat, monkeypatch, chunk) -> None:
    """More findings than one chunk (8,192 in production, a few here): the text between
    and after the chunks is kept, placeholders stay numbered across them."""
    from ringd.plugins import pii_redactor

    text = " and ".join(f"u{index}@example.com, card 4111 1111 1111 1111" for index in range(12)) + " -- end."
    body = chat(("user", text), ("user", "again u3@example.com, tail kept"))
    whole_ctx = make_ctx(copy.deepcopy(body))
    whole = await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(whole_ctx)
    monkeypatch.setattr(pii_redactor, "_MASK_CHUNK", chunk)
    chunked_ctx = make_ctx(copy.deepcopy(body))
    chunked = await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(chunked_ctx)
    assert whole.body is not None
    assert chunked.body == whole.body
    assert whole.body["messages"][0]["content"].endswith("[CREDIT_CARD_1] -- end.")
    assert whole.body["messages"][1]["content"] == "again [EMAIL_4], tail kept"
    assert opened_mapping(chunked_ctx) == opened_mapping(whole_ctx)
    assert (
        chunked_ctx.metadata["pii_counts"]
        == whole_ctx.metadata["pii_counts"]
        == {"email": 13, "credit_card": 12}
    )


async def test_thirty_thousand_findings_numbered_by_first_appearance_and_restored(
    make_ctx, chat, completion
) -> None:
    """A megabyte prompt of 30,000 addresses (9,000 distinct, some written in capitals)
    and a few phone numbers: one placeholder per value, numbered per kind in order of
    first appearance, and the answer's placeholders restored to each value's first spelling."""
    from ringd.plugins.response_sanitizer import ResponseSanitizer

    def spelling(index: int) -> str:
        address = f"user{index % 9_000}@mail.example.com"
        return address.upper() if index % 7 == 3 else address

    words = []
    for index in range(30_000):
        words.append(spelling(index))
        if index % 500 == 499:
            words.append(f"+1 555 {index // 500 % 20:04d}")  # 60 phones, 20 distinct
    prompt = " ".join(words)
    ctx = make_ctx(chat(("user", prompt)))
    outcome = await PiiRedactor({"restore": True, "pii_key": PII_KEY}).execute(ctx)

    assert ctx.metadata["pii_counts"] == {"email": 30_000, "phone": 60}
    assert outcome.body is not None
    masked = outcome.body["messages"][0]["content"]
    expected = []
    for index in range(30_000):
        expected.append(f"[EMAIL_{index % 9_000 + 1}]")
        if index % 500 == 499:
            expected.append(f"[PHONE_{index // 500 % 20 + 1}]")
    assert masked == " ".join(expected)
    mapping = opened_mapping(ctx)
    assert len(mapping) == 9_020
    assert mapping["[EMAIL_4]"] == "USER3@MAIL.EXAMPLE.COM"  # its first spelling
    assert mapping["[EMAIL_9000]"] == "user8999@mail.example.com"
    assert mapping["[PHONE_20]"] == "+1 555 0019"

    # POST_FLIGHT: the model's answer quotes the masked prompt; restored, it reads as the
    # prompt did, each value in its first spelling.
    ctx.response = completion(masked)
    sanitizer = ResponseSanitizer({"types": [], "restore_pii": True, "pii_key": PII_KEY})
    await sanitizer.execute(ctx)
    first_spellings = [mapping[placeholder] for placeholder in expected]
    assert ctx.response["choices"][0]["message"]["content"] == " ".join(first_spellings)
    assert ctx.metadata["_response_sanitizer"]["restored"] == 30_060


@pytest.mark.parametrize("chunk", [1, 2, 5, 8, 9, 100])
async def test_replaced_yielding_equals_replaced(chunk) -> None:
    from ringd.plugins._detect import Detector, replaced, replaced_yielding

    text = "x " + " | ".join(f"p{index}@example.com" for index in range(20)) + " trailing text"
    findings = Detector(["email"]).find(text)
    replacements = [f"<{index}>" for index in range(len(findings))]
    assert await replaced_yielding(text, findings, replacements, chunk) == replaced(
        text, findings, replacements
    )
    assert replaced(text, findings, replacements).endswith("<19> trailing text")
