"""Personalised content, decided locally (DESIGN: personalised content).

    decision = client.content.decide(customer_id, campaign="billboard-berlin-7", device="mobile")
    decision["landing.hero"].content      # what to show
    decision["landing.hero"].explanation  # why
    decision.html("landing.hero")         # an escaped HTML fragment for the page

A decision reads the cached ruleset (no request), and for a known customer who granted
`personalisation` her cached profile (traits, interests, lifecycle, cart, purchases, consent).
Without that consent, no profile is read at all: only the request (campaign, UTM parameters, a
scanned campaign QR, channel, device, locale, time) is used. Experiment exposures are tracked
once per visitor and arm (`experiment_viewed`, with an id derived from both, so the server
stores it once however many backends decide).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from omnisdk._content_cache import MAX_EXPOSURES, MAX_PROFILES, ContentCache, ProfileFacts
from omnisdk.core.content import SlotDecision
from omnisdk.core.recs import recommend
from omnisdk.errors import APITimeoutError, NotFoundError
from omnisdk.models import (
    ConsentState,
    Job,
    Profile,
    RecommendationModel,
    RulesetHistory,
    RulesetIn,
    RulesetVersion,
)
from omnisdk.resources._resource import (
    Blocking,
    C,
    Call,
    Flow,
    Resource,
    checked_customer_id,
    is_customer_id,
    model,
    operation,
    send,
)
from omnisdk.resources.consent import Consent, granted_in
from omnisdk.resources.events import Events
from omnisdk.resources.identity import profile_call

if TYPE_CHECKING:
    from jinja2 import Environment

PERSONALISATION = "personalisation"
UTM_FIELDS = ("source", "medium", "campaign", "content", "term")


@dataclass(frozen=True)
class ContentDecision:
    visitor_id: str | None
    personalised: bool  # False: no profile was read
    ruleset_version: int | None
    slots: dict[str, SlotDecision]
    items: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def __getitem__(self, slot: str) -> SlotDecision:
        return self.slots[slot]

    def content(self, slot: str) -> dict[str, Any]:
        """The slot's content, with `items` for a recommendations slot."""
        decided = self.slots[slot]
        body = dict(decided.content)
        if slot in self.items:
            body["items"] = self.items[slot]
        return body

    def to_json(self) -> str:
        """The decision as JSON text, for an app's API answer (see `to_dict` for the shape)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        """The decision as plain data: `visitor_id`, `personalised`, `ruleset_version`, and
        per slot its `variant`, `reason`, `explanation`, `content` and, for an experiment
        arm, `experiment` ([experiment id, arm])."""
        return {
            "visitor_id": self.visitor_id,
            "personalised": self.personalised,
            "ruleset_version": self.ruleset_version,
            "slots": {
                name: {
                    "variant": d.variant,
                    "reason": d.reason,
                    "explanation": d.explanation,
                    "content": self.content(name),
                    **({"experiment": list(d.experiment)} if d.experiment else {}),
                }
                for name, d in self.slots.items()
            },
        }

    def html(self, slot: str, environment: Environment | None = None) -> str:
        """The slot as an HTML fragment; every value is escaped (Jinja2 autoescape)."""
        env = environment or templates()
        body = self.content(slot)
        name = "recommendations.html" if slot in self.items else "block.html"
        decided = self.slots[slot]
        return env.get_template(name).render(
            slot=slot, variant=decided.variant, content=body, items=body.get("items", [])
        )


_ENVIRONMENT: Environment | None = None


def templates() -> Environment:
    """The SDK's fragment templates (autoescaped); pass your own Environment to restyle."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        from jinja2 import Environment, PackageLoader, select_autoescape

        _ENVIRONMENT = Environment(
            loader=PackageLoader("omnisdk", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        _ENVIRONMENT.filters["safe_url"] = safe_url
    return _ENVIRONMENT


def safe_url(url: Any) -> str:
    """Links and media only to http(s), the shop's own paths, anchors or mail: escaping alone
    would let a `javascript:` URL through."""
    text = str(url or "").strip()
    if text.startswith(("https://", "http://", "#", "mailto:")) or (
        text.startswith("/") and not text.startswith("//")
    ):
        return text
    return "#"


def request_attributes(
    visitor_id: str | None,
    *,
    channel: str | None,
    campaign: str | None = None,
    utm: Mapping[str, str] | None = None,
    qr: str | None = None,
    device: str | None = None,
    locale: str | None = None,
    now: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The condition attributes a request gives (no personal data)."""
    utm = {k.removeprefix("utm_"): v for k, v in (utm or {}).items()}
    when = now or datetime.now(UTC)
    attributes: dict[str, Any] = {
        "id": visitor_id,
        "known": False,
        "channel": channel,
        "device": device,
        "locale": locale,
        "language": locale.split("-")[0].lower() if locale else None,
        "campaign": {
            "id": campaign or qr or utm.get("campaign"),
            "qr": qr,
            **{name: utm.get(name) for name in UTM_FIELDS},
        },
        "time": {"hour": when.hour, "weekday": when.isoweekday(), "date": when.date().isoformat()},
        "consent": {},
    }
    if extra:
        attributes["request"] = dict(extra)
    return attributes


def profile_facts(profile: Profile, now: float) -> ProfileFacts:
    cart = profile.cart
    interests = profile.interests
    attributes = {
        "known": True,
        "traits": profile.traits,
        "interests": interests,
        "top_interest": next(iter(interests), None),
        "lifecycle": profile.lifecycle.value,
        "buyer_type": profile.buyer_type.value,
        "orders": {
            "count": profile.orders.count,
            "value": profile.orders.total_value,
            # Her orders on every channel net of returns, and where she buys (docs/orders.md).
            "net_value": profile.purchases.net_value,
            "by_channel": profile.purchases.by_channel,
        },
        "cart": {
            "lines": cart.lines if cart else 0,
            "units": cart.units if cart else 0,
            "value": cart.value if cart else 0,
            "abandoned": cart.abandoned if cart else False,
            "skus": cart.skus if cart else [],
        },
        "purchased": profile.purchased_skus,
        "ltv": profile.ltv.model_dump(mode="json", exclude={"fitted_at"}) if profile.ltv else {},
        "rfm": profile.rfm.model_dump(mode="json", exclude={"fitted_at"}) if profile.rfm else {},
        # Issue 19: content rules target named segments and her preferred channel.
        "segments": profile.segments,
        "preferred_channel": profile.preferred_channel.value if profile.preferred_channel else None,
    }
    return ProfileFacts(
        attributes,
        tuple(cart.skus) if cart else (),
        tuple(profile.purchased_skus),
        now,
    )


def exposure_event_id(visitor_id: str, experiment: str, arm: str) -> str:
    return hashlib.sha256(f"{visitor_id}\x1f{experiment}\x1f{arm}".encode()).hexdigest()[:32]


def _decide(
    cache: ContentCache,
    attributes: dict[str, Any],
    slots: list[str] | None,
    facts: ProfileFacts | None,
) -> tuple[dict[str, SlotDecision], dict[str, list[dict[str, str]]]]:
    ruleset = cache.ready()
    decided = ruleset.decide(attributes, slots)
    items: dict[str, list[dict[str, str]]] = {}
    for name, decision in decided.items():
        if decision.source == "recommendations":
            picks = recommend(
                cache.recommendations,
                facts.cart if facts else (),
                facts.purchased if facts else (),
                decision.limit,
            )
            items[name] = [{"sku": sku, "why": why} for sku, why in picks]
    return decided, items


def _exposures(
    cache: ContentCache, visitor_id: str | None, decided: dict[str, SlotDecision]
) -> list[tuple[str, str]]:
    new: list[tuple[str, str]] = []
    if visitor_id is None:
        return new
    if len(cache.exposed) > MAX_EXPOSURES:
        cache.exposed.clear()
    for decision in decided.values():
        if decision.experiment is not None:
            key = (visitor_id, *decision.experiment)
            if key not in cache.exposed:
                cache.exposed.add(key)
                new.append(decision.experiment)
    return new


def _who(customer_id: str | None, anonymous_id: str | None) -> dict[str, str]:
    return {"customer_id": customer_id} if customer_id else {"anonymous_id": anonymous_id or ""}


def _personalised(context: dict[str, Any], state: ConsentState | None) -> bool:
    """Put her consent into the context; whether it allows reading her profile."""
    if state is None:
        return False
    context["consent"] = {p: s.granted for p, s in state.purposes.items()}
    return granted_in(state, PERSONALISATION)


def _conclude(
    cache: ContentCache,
    context: dict[str, Any],
    slots: list[str] | None,
    facts: ProfileFacts | None,
    customer_id: str | None,
    anonymous_id: str | None,
) -> tuple[ContentDecision, list[dict[str, Any]]]:
    """The decision, and the `experiment_viewed` events still to track for it."""
    visitor = customer_id or anonymous_id
    decided, items = _decide(cache, context, slots, facts)
    exposures = [
        {
            **_who(customer_id, anonymous_id),
            "event_id": exposure_event_id(visitor or "", experiment, arm),
            "properties": {"experiment": experiment, "variant": arm},
        }
        for experiment, arm in _exposures(cache, visitor, decided)
    ]
    decision = ContentDecision(visitor, facts is not None, cache.ruleset_version, decided, items)
    return decision, exposures


def publish_call(slots: Mapping[str, Any], note: str, if_match: str | None) -> Call[RulesetVersion]:
    body = RulesetIn(slots=dict(slots), note=note)
    return Call(
        "PUT",
        "/v1/content/ruleset",
        model(RulesetVersion),
        json=body.model_dump(mode="json"),
        headers={"If-Match": if_match} if if_match else {},
    )


def versions_call() -> Call[RulesetHistory]:
    return Call("GET", "/v1/content/ruleset/versions", model(RulesetHistory))


def _model_or_job(body: Any) -> RecommendationModel | Job:
    # 200: the model; 202: the rebuild job, still running when the server stopped waiting.
    if isinstance(body, dict) and "job_id" in body:
        return Job.model_validate(body)
    return RecommendationModel.model_validate(body)


def rebuild_call() -> Call[RecommendationModel | Job]:
    return Call("POST", "/v1/content/recommendations/rebuild", _model_or_job)


class Content(Resource[C]):
    """Personalised content: author rulesets (admin keys) and decide slots locally."""

    @operation
    def publish(
        self, slots: Mapping[str, Any], note: str = "", if_match: str | None = None
    ) -> Flow[RulesetVersion]:
        """Publish a new ruleset version (admin keys); InvalidRuleset problems list each error.
        `if_match` (a version's ETag) refuses the publish if someone published meanwhile."""
        return (yield from send(publish_call(slots, note, if_match)))

    @operation
    def versions(self) -> Flow[RulesetHistory]:
        """The published ruleset versions, newest first."""
        return (yield from send(versions_call()))

    @operation
    def rebuild_recommendations(self, max_wait: float = 600.0) -> Flow[RecommendationModel]:
        """Recompute the "bought together" model from the events since the last build, and
        return it (admin keys). The server runs it as a job; while it runs, asking again
        follows the same job, for up to `max_wait` seconds (then APITimeoutError)."""
        deadline = time.monotonic() + max_wait
        while True:
            answer = yield from send(rebuild_call())
            if isinstance(answer, RecommendationModel):
                return answer
            if time.monotonic() >= deadline:
                raise APITimeoutError(
                    f"the recommendations rebuild (job {answer.job_id}) is still running after "
                    f"{max_wait:g} s; it goes on on the server: GET /v1/jobs/{answer.job_id}"
                )

    @operation
    def decide(
        self,
        customer_id: str | None = None,
        *,
        anonymous_id: str | None = None,
        slots: list[str] | None = None,
        device_id: str | None = None,
        campaign: str | None = None,
        utm: Mapping[str, str] | None = None,
        qr: str | None = None,
        device: str | None = None,
        locale: str | None = None,
        now: datetime | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Flow[ContentDecision]:
        """Decide `slots` (all when None) for a known customer or an anonymous visitor, from
        the cached ruleset; her profile is read only if she granted personalisation."""
        if customer_id is not None and not isinstance(customer_id, str):
            checked_customer_id(customer_id)  # the wrong type: refused as everywhere
        client = self._client
        cache = client.content_cache
        if cache.ruleset is None:
            yield Blocking(cache.ready)  # the first load waits for the network
        context = request_attributes(
            customer_id or anonymous_id,
            channel=client.channel.value if client.channel else None,
            campaign=campaign,
            utm=utm,
            qr=qr,
            device=device,
            locale=locale,
            now=now,
            extra=attributes,
        )
        facts = None
        # A customer the server does not know (erased, another shop's id, text that cannot be
        # an id, as in a forged cookie) gets the page of a visitor: a landing page must render,
        # not fail.
        with contextlib.suppress(NotFoundError):
            state = (
                (yield from Consent.state.flow(client.consent, customer_id, device_id))
                if is_customer_id(customer_id)
                else None
            )
            if customer_id and _personalised(context, state):
                facts = cache.profile(customer_id)
                if facts is None:
                    profile: Profile = yield profile_call(customer_id)
                    facts = _remember(cache, customer_id, profile)
                context.update(facts.attributes)
        decision, exposures = _conclude(cache, context, slots, facts, customer_id, anonymous_id)
        for exposure in exposures:
            yield from Events.track.flow(client.events, "experiment_viewed", **exposure)
        return decision

    @operation
    def refresh(self) -> Flow[None]:
        """Re-check the ruleset and recommendations now (normally done in the background)."""
        yield Blocking(self._client.content_cache.refresh)


def _remember(cache: ContentCache, customer_id: str, profile: Profile) -> ProfileFacts:
    import time

    facts = profile_facts(profile, time.monotonic())
    if len(cache.profiles) > MAX_PROFILES:
        cache.profiles.clear()  # a burst of visitors: start afresh rather than grow for ever
    for known in {customer_id, profile.customer_id}:
        cache.profiles[known] = facts
    return facts
