"""Which search an inference runs: the requested mode, or for ``'auto'`` (``infer.py``'s default) the approximate
search where the exact one is expensive (above :data:`~extracter.archs.search_approximate.AUTO_APPROXIMATE_ABOVE`
multiply-adds) and the exact one below; and a one-line account of what ran, for the user."""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from extracter.archs import search_approximate as approx
from extracter.archs.refsr_base import SCALE
from extracter.archs.search_approximate import ApproximateSettings, auto_search_mode, exact_multiply_adds, uses_exact
from extracter.archs.search_transfer import FEATURE_CHANNELS, SearchTransfer


@dataclass(frozen=True)
class SearchChoice:
    """``mode``: what the network runs (None: its own, unchanged); ``requested``: what was asked for;
    ``multiply_adds``: the exact search's cost for this input; ``exact``: whether the result is the exact search's
    (dense, chunked, or approximate falling back to exact on small inputs)."""

    mode: Optional[str]
    requested: Optional[str]
    multiply_adds: int
    exact: bool

    def describe(self, ran: str) -> str:
        """One line: the search that ``ran`` (the network's mode during the run) and why."""
        what = f'{ran} search' if ran != 'approximate' or not self.exact else \
            'approximate search (small input: the exact chunked search)'
        if self.requested == 'auto':
            limit = approx.AUTO_APPROXIMATE_ABOVE
            side = '>' if self.multiply_adds > limit else '<='
            what += f' (auto: exact search {self.multiply_adds:.2e} multiply-adds {side} {limit:.2e})'
        return what


def search_grids(st: SearchTransfer, lr_hw: Tuple[int, int], ref_hws: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """(LR patches, reference patches summed over the references) of padded images: the queries are relu3_1 of the
    x4 upsampled LR (the LR's size), the keys relu3_1 of each reference (1/4 of its size)."""
    gh, gw = st.grid_size(*lr_hw)
    return gh * gw, sum(st.grid_size(h // SCALE, w // SCALE)[0] * st.grid_size(h // SCALE, w // SCALE)[1]
                        for h, w in ref_hws)


def choose_search(st: SearchTransfer, requested: Optional[str], lr_hw: Tuple[int, int],
                  ref_hws: Sequence[Tuple[int, int]], settings: Optional[ApproximateSettings] = None) -> SearchChoice:
    """Resolve ``requested`` (None, a network mode, or ``'auto'``) for padded LR / reference sizes under the
    network's current geometry."""
    n_query, n_keys = search_grids(st, lr_hw, ref_hws)
    work = exact_multiply_adds(n_query, n_keys, FEATURE_CHANNELS[3], st.window)
    mode = requested
    if requested == 'auto':
        mode = 'approximate' if auto_search_mode(n_query, n_keys, FEATURE_CHANNELS[3], st.window) == 'approximate' \
            else None
    ran = st.mode if mode is None else mode
    settings = settings or st.approximate
    # several references are searched one by one: exact when every one of them falls back
    exact = ran != 'approximate' or all(
        uses_exact(n_query, st.grid_size(h // SCALE, w // SCALE)[0] * st.grid_size(h // SCALE, w // SCALE)[1],
                   settings) for h, w in ref_hws)
    return SearchChoice(mode, requested, work, exact)
