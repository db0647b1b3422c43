"""Choice lists of the case tables (`sys_choice`): the labels `sysparm_display_value` shows, and closed states.

The state values are the CSM case's (1 New, 10 Open, 18 Awaiting Info, 6 Resolved, 3 Closed, 7 Cancelled); the FSO
documents list others, which is why ticketsync keeps them configurable. An instance business rule sets
`active=false` when a case reaches a closed state; the emulator does the same.
"""

from __future__ import annotations

from collections.abc import Mapping

CASE_CHOICES: Mapping[str, Mapping[str, str]] = {
    "state": {"1": "New", "10": "Open", "18": "Awaiting Info", "6": "Resolved", "3": "Closed", "7": "Cancelled"},
    "category": {"0": "Question", "1": "Issue", "2": "Feature"},
    "priority": {"1": "1 - Critical", "2": "2 - High", "3": "3 - Moderate", "4": "4 - Low"},
    "contact_type": {"chat": "Chat", "email": "Email", "phone": "Phone", "social": "Social", "web": "Web"},
    "active": {"true": "true", "false": "false"},
}
INACTIVE_STATES = frozenset({"3", "7"})


def display_value(choices: Mapping[str, Mapping[str, str]], name: str, value: str) -> str:
    """The label of a choice value; a value outside the list shows as itself (as the instance does)."""
    return choices.get(name, {}).get(value, value)
