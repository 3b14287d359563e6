"""The web page's time-left estimate: a job's work, stage by stage, times this machine's measured speed.

A job is a sequence of stages (:func:`refsr_stages`, :func:`single_image_stages`), each of a *kind* with an amount
of work in that kind's *units*:

- ``keys``: reference pixels (the VGG search keys of one reference; the engine's ``'encoding reference i/n'``);
- ``search:<method>``: the exact search's multiply-adds (LR patches x reference patches x C k^2,
  :func:`extracter.search.choice.choose_search`), whatever the method that runs (its rate is kept apart);
- ``textures``: reference pixels (the references' texture features, after the search);
- ``main``: LR pixels x the network's parameters (the main network, untiled or tile by tile);
- ``sisr``: LR pixels x parameters (a single-image network).

:class:`SpeedBook` keeps the seconds per unit measured on this machine, per model and kind, refined by each job
(an even mix of the old rate and the new measurement). A stage's estimate is its units times the rate of its model
and kind; with none yet, the mean rate of that kind over the other models (the units count the parameters, so
models compare), else the ``keys`` rate measured so far (the first stage of the first job: the calibration) times
the kind's cost relative to it (:data:`RELATIVE_COST`, measured once on a CPU with the demo model; only a first
guess, replaced by the measurement as soon as that stage has run once). Before anything is measured there is no
estimate (None).

:class:`JobClock` follows one job: the stage it is in, the fraction done and the seconds left. In a stage without
tiles the fraction advances with the time spent against the stage's estimate, capped at :data:`STAGE_CAP` of the
stage until the next one starts (the page's timer re-reads it, so the bar moves while the engine is silent); with
tiles, the tiles' pace. The stages done so far correct the rest (their measured time over their estimate).
"""

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STAGE_CAP = 0.95  # an untiled stage never shows more than this share of itself done before it ends
MIX = 0.5  # the weight of a new measurement in a rate (the rest: the rates measured before)
# seconds per unit of each kind relative to the 'keys' rate (measured with pretrained/demo_cpu on a 2-core CPU:
# a first guess for kinds not yet measured on this machine)
RELATIVE_COST = {'keys': 1.0, 'textures': 0.9, 'search:chunked': 1e-5, 'search:dense': 1e-5, 'search:faiss': 1e-5,
                 'search:approximate': 5e-6, 'main': 3e-4, 'sisr': 3e-4}


@dataclass(frozen=True)
class Stage:
    """One stage of a job: the text shown, its kind (the rate it uses) and its work in that kind's units."""

    text: str
    kind: str
    units: float


def refsr_stages(ref_px: Sequence[int], search_method: str, search_multiply_adds: float, lr_px: int,
                 parameters: int) -> List[Stage]:
    """The stages of a reference-based job, in the engine's order (padded sizes: what the engine computes on)."""
    n = len(ref_px)
    return ([Stage(f'encoding the reference {i}/{n}', 'keys', px) for i, px in enumerate(ref_px, start=1)] +
            [Stage('search', f'search:{search_method}', float(search_multiply_adds)),
             Stage('textures', 'textures', float(sum(ref_px))),
             Stage('main network', 'main', float(lr_px) * parameters)])


def single_image_stages(lr_px: int, parameters: int, tiled: bool) -> List[Stage]:
    return [Stage('single-image model' + (', tile by tile' if tiled else ''), 'sisr', float(lr_px) * parameters)]


class SpeedBook:
    """Seconds per unit of work measured on this machine, per (model, kind); thread-safe."""

    def __init__(self) -> None:
        self._rates: Dict[Tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, model: str, kind: str, units: float, seconds: float) -> None:
        if units <= 0 or seconds <= 0:
            return
        measured = seconds / units
        with self._lock:
            old = self._rates.get((model, kind))
            self._rates[(model, kind)] = measured if old is None else (1 - MIX) * old + MIX * measured

    def rate(self, model: str, kind: str) -> Optional[float]:
        """Seconds per unit of ``kind`` for ``model`` (see the module docstring for the fall-backs), or None."""
        with self._lock:
            own = self._rates.get((model, kind))
            if own is not None:
                return own
            others = [r for (_, k), r in self._rates.items() if k == kind]
            if others:
                return sum(others) / len(others)
            keys = [r for (_, k), r in self._rates.items() if k == 'keys']
        if keys and kind in RELATIVE_COST:
            return sum(keys) / len(keys) * RELATIVE_COST[kind]
        return None

    def estimate(self, model: str, stages: Sequence[Stage]) -> Optional[float]:
        """Seconds for all of ``stages``, or None when one of them cannot be estimated yet."""
        total = 0.0
        for s in stages:
            rate = self.rate(model, s.kind)
            if rate is None:
                return None
            total += rate * s.units
        return total

    def known(self) -> Dict[Tuple[str, str], float]:
        with self._lock:
            return dict(self._rates)


class JobClock:
    """One job's stages against the clock (see the module docstring). ``now``: the time source (tests pass their
    own)."""

    def __init__(self, book: SpeedBook, model: str, stages: Sequence[Stage],
                 now: Callable[[], float] = time.monotonic) -> None:
        self.book, self.model, self.stages, self.now = book, model, list(stages), now
        self.current = -1  # the index of the stage running (-1: none yet)
        self.t_stage = now()
        self.estimates: List[Optional[float]] = [None] * len(self.stages)
        self.actual: List[float] = []
        self.tiles: Optional[Tuple[int, int]] = None  # (done, total) of the current stage
        self._fraction = 0.0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- events
    def enter(self, index: int) -> None:
        """Stage ``index`` starts: the one before it is measured (and recorded in the book)."""
        with self._lock:
            self._close_stage()
            self.current = index
            self.t_stage = self.now()
            self.tiles = None
            for i in range(index, len(self.stages)):  # the rates measured so far, this job's stages included
                rate = self.book.rate(self.model, self.stages[i].kind)
                self.estimates[i] = None if rate is None else rate * self.stages[i].units

    def enter_text(self, text: str) -> None:
        """The stage named ``text`` (the engine's words) starts; an unknown text is ignored."""
        index = next((i for i, s in enumerate(self.stages) if i > self.current and _matches(s.text, text)), None)
        if index is not None:
            self.enter(index)

    def tile(self, done: int, total: int) -> None:
        with self._lock:
            self.tiles = (done, total)

    def finish(self) -> None:
        """The computation is over: the last stage is measured."""
        with self._lock:
            self._close_stage()
            self.current = len(self.stages)

    def _close_stage(self) -> None:
        if 0 <= self.current < len(self.stages):
            seconds = self.now() - self.t_stage
            stage = self.stages[self.current]
            self.actual.append(seconds)
            self.book.record(self.model, stage.kind, stage.units, seconds)

    # ---------------------------------------------------------------- readings
    def text(self) -> str:
        with self._lock:
            if not 0 <= self.current < len(self.stages):
                return ''
            stage = self.stages[self.current].text
            return stage if self.tiles is None else f'{stage}, tiles {self.tiles[0]}/{self.tiles[1]}'

    def _slowdown(self) -> float:
        """Measured / estimated time of the stages done that had an estimate (1 without any)."""
        pairs = [(a, e) for a, e in zip(self.actual, self.estimates) if e]
        est = sum(e for _, e in pairs)
        return sum(a for a, _ in pairs) / est if est > 0 else 1.0

    def _current_done(self, elapsed: float, estimate: Optional[float]) -> Optional[float]:
        """The share of the current stage done: the tiles', else the time against the estimate (capped)."""
        if self.tiles is not None and self.tiles[1]:
            return self.tiles[0] / self.tiles[1]
        if estimate is None:
            return None
        return min(STAGE_CAP, elapsed / estimate) if estimate > 0 else STAGE_CAP

    def seconds_left(self) -> Optional[float]:
        """The estimated seconds until the computation ends; None while a stage cannot be estimated."""
        with self._lock:
            if self.current >= len(self.stages):
                return 0.0
            first = max(self.current, 0)
            rest = self.estimates[first + 1:] if self.current >= 0 else self.estimates
            if any(e is None for e in rest):
                return None
            q = self._slowdown()
            elapsed = self.now() - self.t_stage
            left = q * sum(rest)
            if self.current >= 0:
                if self.tiles is not None and self.tiles[0]:
                    done, total = self.tiles
                    left += elapsed / done * (total - done)
                elif self.estimates[self.current] is None:
                    return None
                else:
                    left += max(0.0, q * self.estimates[self.current] - elapsed)
            return left

    def fraction(self) -> float:
        """The fraction of the computation done, never decreasing, below 1 until :meth:`finish`."""
        with self._lock:
            if self.current >= len(self.stages):
                self._fraction = 1.0
                return 1.0
            est = [e if e is not None else None for e in self.estimates]
            if self.current < 0:
                value = 0.0
            elif all(e is not None for e in est):
                total = sum(est) or 1.0
                done = sum(est[:self.current])
                share = self._current_done(self.now() - self.t_stage, est[self.current]) or 0.0
                value = (done + share * est[self.current]) / total
            else:  # not all estimated yet: the stages counted alike
                share = self._current_done(self.now() - self.t_stage, est[self.current]) or 0.0
                value = (self.current + share) / len(self.stages)
            self._fraction = max(self._fraction, min(STAGE_CAP, value))
            return self._fraction


def _matches(stage_text: str, engine_text: str) -> bool:
    """Whether the engine's stage text names this stage ('encoding reference 1/2' is 'encoding the reference
    1/2')."""
    return stage_text.replace('encoding the ', 'encoding ') == engine_text or stage_text == engine_text
