"""Which search an inference runs: the one function that turns what was asked for (a method, ``'auto'`` or nothing)
into the call's :class:`~extracter.search.spec.SearchSpec`, with a one-line account of what ran and why.

``auto`` (``infer.py``'s default): the approximate search where the exact one is expensive (above
:data:`~extracter.search.methods.approximate.AUTO_APPROXIMATE_ABOVE` multiply-adds), else as nothing asked. Nothing
asked: the network's own method, except that a memory budget implies the chunked search.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from extracter.search.methods import approximate as approx
from extracter.search.spec import FEATURE_CHANNELS, KEYS_DOWNSCALE, SearchSpec

AUTO = 'auto'


@dataclass(frozen=True)
class SearchChoice:
    """``spec``: what runs; ``requested``: what was asked for; ``multiply_adds``: the exact search's cost for this
    input; ``exact``: whether the result is the exact search's (an approximate method may fall back on small
    inputs)."""

    spec: SearchSpec
    requested: Optional[str]
    multiply_adds: int
    exact: bool

    def describe(self) -> str:
        """One line: the search that ran and why."""
        ran = self.spec.method
        what = f'{ran} search' if self.spec.search_method.exact or not self.exact else \
            f'{ran} search (small input: the exact chunked search)'
        if self.requested == AUTO:
            limit = approx.AUTO_APPROXIMATE_ABOVE
            side = '>' if self.multiply_adds > limit else '<='
            what += f' (auto: exact search {self.multiply_adds:.2e} multiply-adds {side} {limit:.2e})'
        return what


def search_grids(spec: SearchSpec, lr_hw: Tuple[int, int], ref_hws: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """(LR patches, reference patches summed over the references) of padded images: the queries are relu3_1 of the
    x4 upsampled LR (the LR's size), the keys relu3_1 of each reference (1/4 of its size)."""
    return spec.patch_count(*lr_hw), sum(_key_counts(spec, ref_hws))


def _key_counts(spec: SearchSpec, ref_hws: Sequence[Tuple[int, int]]):
    """Each reference's patch count (its keys: relu3_1 of the reference, at 1/4 of its size)."""
    return [spec.patch_count(h // KEYS_DOWNSCALE, w // KEYS_DOWNSCALE) for h, w in ref_hws]


def choose_search(spec: SearchSpec, requested: Optional[str], lr_hw: Tuple[int, int],
                  ref_hws: Sequence[Tuple[int, int]], budgeted: bool = False) -> SearchChoice:
    """The spec of one call for padded LR / reference sizes. ``spec``: the call's spec before the choice (the
    network's default with this call's geometry and settings); ``requested``: a method name, ``'auto'`` or None;
    ``budgeted``: a memory budget is given (nothing asked then means chunked)."""
    n_query, n_keys = search_grids(spec, lr_hw, ref_hws)
    work = approx.exact_multiply_adds(n_query, n_keys, FEATURE_CHANNELS[3], spec.window)
    if requested == AUTO:  # read at call time (a setting of the approximate module)
        method = 'approximate' if work > approx.AUTO_APPROXIMATE_ABOVE else None
    else:
        method = requested
    if method is None:
        method = 'chunked' if budgeted else spec.method
    chosen = spec.replace(method=method)
    runner = chosen.search_method
    missing = runner.available()
    if missing is not None:
        raise ValueError(f'search mode {method}: {missing}')
    # several references are searched one by one: exact when every one of them is
    exact = all(runner.is_exact_for(n_query, keys, chosen) for keys in _key_counts(spec, ref_hws))
    return SearchChoice(chosen, requested, work, exact)
