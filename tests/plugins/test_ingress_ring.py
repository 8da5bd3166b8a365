"""The INGRESS ring of the default pipeline (api_key_auth, then rate_limiter), run by the real
engine through ringd.testing: priority order, shared metadata, a store that counts across
requests, and the block a gateway would send (status, error type, Retry-After)."""

from __future__ import annotations

import hashlib

from ringd.sdk import PluginAction
from support.clock import early_in_a_window

DEMO_KEY = "ringd-demo-key"

INGRESS = f"""
plugins:
  - name: rate_limiter             # listed first, runs second: priority decides
    entrypoint: ringd.plugins.rate_limiter:RateLimiter
    hook: ingress
    priority: 20
    timeout_ms: 5000               # generous: the test is about behaviour, not speed
    config:
      requests_per_window: 600
      window_s: 60
      overrides: {{trial: {{requests_per_window: 2}}}}
  - name: api_key_auth
    entrypoint: ringd.plugins.api_key_auth:ApiKeyAuth
    hook: ingress
    priority: 10
    timeout_ms: 5000
    config:
      allow_anonymous: true
      anonymous_tenant: demo
      keys:
        - {{id: demo-key, tenant: trial, sha256: {hashlib.sha256(DEMO_KEY.encode()).hexdigest()}}}
"""

BEARER = {"authorization": f"Bearer {DEMO_KEY}"}


async def test_auth_runs_first_and_tells_the_limiter_the_tenant(ring_harness) -> None:
    rings = await ring_harness(INGRESS)

    outcome = await rings.run("ingress", {"model": "m"}, headers=BEARER)

    assert outcome.action is PluginAction.PASSTHROUGH
    assert [result.plugin for result in outcome.results] == ["api_key_auth", "rate_limiter"]
    assert outcome.context.metadata["tenant"] == "trial"
    assert outcome.context.metadata["_rate_limiter"]["requests_remaining"] == 1


async def test_the_third_request_of_the_trial_key_is_refused_with_retry_after(ring_harness) -> None:
    rings = await ring_harness(INGRESS)

    await early_in_a_window()  # the trial key's three requests in one minute
    outcomes = [await rings.run("ingress", {"model": "m"}, headers=BEARER) for _ in range(3)]

    assert [o.action.value for o in outcomes] == ["passthrough", "passthrough", "block"]
    refused = outcomes[-1]
    assert refused.decided_by == "rate_limiter"
    assert refused.decision is not None
    assert (refused.decision.status_code, refused.decision.error_type) == (429, "rate_limited")
    assert refused.decision.headers == {"Retry-After": str(refused.context.metadata["retry_after_s"])}
    # Anonymous callers are another tenant, counted apart.
    assert (await rings.run("ingress", {"model": "m"})).action is PluginAction.PASSTHROUGH


async def test_a_wrong_key_is_refused_before_the_limiter_runs(ring_harness) -> None:
    rings = await ring_harness(INGRESS)

    outcome = await rings.run("ingress", {"model": "m"}, headers={"authorization": "Bearer nope"})

    assert (outcome.action, outcome.decided_by) == (PluginAction.BLOCK, "api_key_auth")
    assert outcome.decision is not None
    assert outcome.decision.status_code == 401
    assert [result.plugin for result in outcome.results] == ["api_key_auth"]
