"""Business keys to sys_ids: one look-up per reference table per batch of rows, cached for the load.

The decisions are here and pure; the look-up itself is a function the loader passes in (the hook's
``find_by_keys`` wrapped in the loader's retries), so this module does no I/O of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ticketsync.models import FieldError, KeyLookup, PreparedCase, Rejection, preview

# (table, key field, keys) -> sys_ids by key folded to lower case
KeyFetch = Callable[[str, str, list[str]], dict[str, list[str]]]
SHOWN_MATCHES = 5


class ReferenceResolver:
    """Resolves the business keys of prepared cases for one load.

    Every key of a batch that is not cached yet is looked up in one ``<key_field>IN…`` query per reference table;
    the answer (found or not) is cached, so a key is looked up at most once per load. Keys compare without case,
    as the instance's queries do.

    :param fetch: looks keys up on the instance; it raises when the instance cannot answer (the rows then stay
        pending: nothing about them is known)
    """

    def __init__(self, fetch: KeyFetch) -> None:
        self._fetch = fetch
        self._cache: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.lookups = 0

    def resolve(self, cases: Sequence[PreparedCase]) -> list[PreparedCase | Rejection]:
        """Each case with its keys resolved into its body, or a rejection naming each key that did not resolve."""
        missing: dict[tuple[str, str], dict[str, str]] = {}
        for case in cases:
            for lookup in case.keys:
                ref = (lookup.key.table, lookup.key.key_field)
                folded = lookup.value.casefold()
                if folded not in self._cache.get(ref, {}):
                    missing.setdefault(ref, {}).setdefault(folded, lookup.value)
        for (table, key_field), keys in missing.items():
            self.lookups += 1
            found = self._fetch(table, key_field, sorted(keys.values()))
            cache = self._cache.setdefault((table, key_field), {})
            for folded in keys:
                cache[folded] = found.get(folded, [])
        return [self._apply(case) for case in cases]

    def _matches(self, lookup: KeyLookup) -> list[str]:
        return self._cache[(lookup.key.table, lookup.key.key_field)][lookup.value.casefold()]

    def _apply(self, case: PreparedCase) -> PreparedCase | Rejection:
        if not case.keys:
            return case
        errors: list[FieldError] = []
        resolved: dict[str, str] = {}
        for lookup in case.keys:
            matches = self._matches(lookup)
            if len(matches) == 1:
                resolved[lookup.key.field] = matches[0]
            elif matches:
                errors.append(_ambiguous(lookup, matches))
            elif lookup.key.on_no_match == "reject":
                errors.append(_unknown(lookup))
        if errors:
            return Rejection(row_id=case.row_id, errors=tuple(errors))
        return dataclasses.replace(
            case, body=case.body.model_copy(update=resolved), keys=(), resolved=tuple(sorted(resolved.items()))
        )


def _unknown(lookup: KeyLookup) -> FieldError:
    key = lookup.key
    return FieldError(key.column, f"no {key.table} with {key.key_field} {preview(lookup.value)}")


def _ambiguous(lookup: KeyLookup, matches: list[str]) -> FieldError:
    key = lookup.key
    shown = ", ".join(matches[:SHOWN_MATCHES]) + (", …" if len(matches) > SHOWN_MATCHES else "")
    return FieldError(
        key.column,
        f"{len(matches)} {key.table} records have {key.key_field} {preview(lookup.value)} ({shown}); "
        f"give {key.field} (the sys_id) instead",
    )
