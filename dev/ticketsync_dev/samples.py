"""Sample ticket requests, as an online-banking system would write them: for the demo, tests and benchmarks.

Deterministic (seeded), with a share of rows that break one rule each, so a run shows rejections with reasons.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

SHORT_DESCRIPTIONS = (
    "Request for loan forgiveness",
    "Request for payment deferment",
    "Question about my loan restructure",
    "Dispute a late fee on my loan",
    "Change the loan repayment date",
)
NOTES = (
    "Customer called after losing their job; wants to know the options.",
    "Submitted from the mobile app. Préférence de contact : courriel. 顧客は日本語を話します。",
    "Second request this month.\nPlease call back before 5 pm.",
)
CHANNELS = ("web", "email", "phone", "chat", "social")
CATEGORIES = ("0", "1", "2", "Question", "Issue", "Feature")
# Each invalid sample breaks one documented rule; the rejection reason names that column.
INVALID_CHANGES: tuple[dict[str, Any], ...] = (
    {"consumer": "not-a-sys-id"},
    {"short_description": "   "},
    {"contact_type": "fax"},
    {"category": "Complaint"},
    {"short_description": "x" * 161},
    {"sold_product": None},
    {"notes": "n" * 4001},
    {"target_table": "incident"},
)


def _sys_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def sample_request(index: int, rng: random.Random, *, prefix: str = "REQ") -> dict[str, Any]:
    """One valid request."""
    return {
        "request_id": f"{prefix}-{index:07d}",
        "source_system": "online-banking",
        "target_table": "sn_bom_loan_service",
        "consumer": _sys_id(rng),
        "sold_product": _sys_id(rng),
        "assignment_group": _sys_id(rng),
        "contact_type": rng.choice(CHANNELS),
        "product": _sys_id(rng),
        "service_definition": _sys_id(rng),
        "category": rng.choice(CATEGORIES),
        "short_description": rng.choice(SHORT_DESCRIPTIONS),
        "notes": rng.choice(NOTES),
    }


def sample_requests(
    count: int, *, invalid_every: int = 0, seed: int = 7, prefix: str = "REQ", start: int = 1
) -> Iterator[dict[str, Any]]:
    """``count`` requests; every ``invalid_every``-th (if set) breaks one rule, cycling through the rules."""
    rng = random.Random(seed)
    for index in range(start, start + count):
        request = sample_request(index, rng, prefix=prefix)
        if invalid_every and index % invalid_every == 0:
            request.update(INVALID_CHANGES[(index // invalid_every) % len(INVALID_CHANGES)])
        yield request


def is_invalid(index: int, invalid_every: int) -> bool:
    return bool(invalid_every) and index % invalid_every == 0


# Business-key requests (issue 12): the keys the emulator's seed holds (ticketsync_dev.emulator.reference).
KEY_CONSUMERS = tuple(f"C-{n:04d}" for n in range(1, 13))
KEY_GROUPS = ("Loan Servicing", "Loan Operations")
# Each bad sample breaks one key rule; the rejection reason names the key column.
BAD_KEY_CHANGES: tuple[dict[str, Any], ...] = (
    {"consumer_number": "C-0042"},  # no such consumer
    {"account_number": "LN-100099"},  # two accounts share this number
    {"consumer": "0f2c6e1a9b3d4c5e8f7a6b5c4d3e2f1a"},  # the sys_id and the key both given
    {"assignment_group_name": "Collections"},  # two groups share this name
    {"assignment_group_name": "Mortgage Desk"},  # no such group
)


def keyed_request(index: int, rng: random.Random, *, prefix: str = "KEY") -> dict[str, Any]:
    """One valid request that names its consumer, loan account and group by business key only (no sys_id)."""
    owner = rng.randrange(len(KEY_CONSUMERS))
    return {
        "request_id": f"{prefix}-{index:07d}",
        "source_system": "core-banking",
        "target_table": "sn_bom_loan_service",
        "consumer_number": KEY_CONSUMERS[owner],
        "account_number": f"LN-1000{owner + 1:02d}",
        "assignment_group_name": rng.choice(KEY_GROUPS),
        "contact_type": rng.choice(CHANNELS),
        "category": rng.choice(CATEGORIES),
        "short_description": rng.choice(SHORT_DESCRIPTIONS),
        "notes": rng.choice(NOTES),
    }


def keyed_requests(
    count: int, *, bad_every: int = 0, seed: int = 11, prefix: str = "KEY", start: int = 1
) -> Iterator[dict[str, Any]]:
    """``count`` business-key requests; every ``bad_every``-th (if set) has a key that cannot be used, cycling
    through unknown, ambiguous and both-given keys."""
    rng = random.Random(seed)
    for index in range(start, start + count):
        request = keyed_request(index, rng, prefix=prefix)
        if bad_every and index % bad_every == 0:
            request.update(BAD_KEY_CHANGES[(index // bad_every) % len(BAD_KEY_CHANGES)])
        yield request
