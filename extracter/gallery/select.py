"""The choice of an LR image's references from an indexed gallery, in two stages.

1. Shortlist: the cosine of the LR's global descriptor (:mod:`extracter.gallery.descriptor`) with every indexed one,
   an exact matrix product over the float16 matrix (torch, in blocks), top ``shortlist`` (M). Above
   :data:`FAISS_ABOVE` images, with faiss installed, an IVF index of faiss (:class:`FaissShortlist`) instead.
2. Re-rank: how much matching texture each candidate really offers this LR. The LR and the candidate are scaled by
   one factor (the LR's long side to :data:`RERANK_QUERY_SIDE` relu3_1 positions; a candidate whose keys would
   exceed :data:`RERANK_KEY_SIDE` a side is scaled further), then the network's own search (its features, geometry
   and the exact search of :func:`extracter.search.search_references`, TTSR Eq. 4) gives each LR patch's best
   relevance against the candidate. The K references are then chosen greedily by coverage: each step takes the
   candidate that most raises the mean over the LR's patches of the best relevance among those chosen (the first:
   the highest mean relevance; once the chosen ones cover the LR, the best of the rest by its own mean relevance). A
   candidate whose patch relevances equal a chosen one's (within ``duplicate_tolerance`` on average) offers the same
   patches: a near-duplicate, not taken (fewer than K are chosen when only such are left).

The LR's own HR in the gallery is a legal choice; its bicubic upscale never is (:func:`is_upscale_of`).
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from extracter.archs.refsr_base import SCALE, RefSRNet, make_lr_up
from extracter.data.degradations import pil_bicubic
from extracter.data.image_io import ImageReadError, read_image
from extracter.gallery.descriptor import describe_tensor, scaled, to_unit_tensor
from extracter.gallery.index import GalleryIndex
from extracter.search import search_references

DEFAULT_REFS_PER_IMAGE = 2
DEFAULT_SHORTLIST = 12
RERANK_QUERY_SIDE = 32  # relu3_1 positions along the LR's long side in the re-rank
RERANK_KEY_SIDE = 64  # at most this many along a candidate's long side
DUPLICATE_TOLERANCE = 2e-3  # mean |difference| of two candidates' patch relevances under which they are duplicates
GAIN_FLOOR = 1e-3  # a rise of the mean best relevance under this is no rise (the LR is covered)
FAISS_ABOVE = 200_000  # gallery size above which the faiss shortlist (when installed) is used
UPSCALE_MATCH_DB = 30.0  # a candidate scaled to the LR size this close to the LR (PSNR) shows the same picture
UPSCALE_DETAIL_DB = 30.0  # ... and this close to its own down-up version has no detail beyond the LR's band
SHORTLIST_BLOCK = 65536  # rows of the descriptor matrix per block of the exact product


@dataclass(frozen=True)
class ChosenReference:
    """One chosen reference: its ``path``, ``rank`` (1 = best), ``score`` (what it adds to the LR's coverage: the
    mean over the LR's patches of the rise of the best relevance, TTSR Eq. 4's cosine), ``shortlist_score`` (the
    cosine of the global descriptors) and ``rerank_score`` (its own mean best relevance)."""

    path: str
    rank: int
    score: float
    shortlist_score: float
    rerank_score: float


@dataclass
class Selection:
    """The references chosen for one LR image, and what was left out and why (``notes``: bicubic upscales of the
    LR, near-duplicates, unreadable candidates, fewer images than asked for)."""

    chosen: List[ChosenReference] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def paths(self) -> List[str]:
        return [c.path for c in self.chosen]


def shortlist_exact(descriptors: np.ndarray, query: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``m``: (scores, row indices), best first; the float16 matrix is read in blocks as float32."""
    q = torch.from_numpy(np.asarray(query, np.float32))
    n = descriptors.shape[0]
    m = min(m, n)
    best_s, best_i = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, n, SHORTLIST_BLOCK):
        block = torch.from_numpy(np.asarray(descriptors[start:start + SHORTLIST_BLOCK])).float()
        s, i = torch.topk(block @ q, min(m, block.shape[0]))
        best_s, best_i = torch.cat([best_s, s]), torch.cat([best_i, i + start])
        if best_s.numel() > m:
            best_s, pos = torch.topk(best_s, m)
            best_i = best_i[pos]
    order = torch.argsort(best_s, descending=True, stable=True)
    return best_s[order].numpy(), best_i[order].numpy()


class FaissShortlist:
    """An inverted-file index of faiss over the descriptors (``faiss-cpu``, optional): sub-linear shortlists for
    galleries of millions (``nlist`` lists, default sqrt(N), ``nprobe`` of them searched; vectors stored as float16
    by a scalar quantiser: 2 bytes a dimension). Recall against the exact shortlist: benchmarks/gallery_scaling.py."""

    def __init__(self, descriptors: np.ndarray, nlist: Optional[int] = None, nprobe: int = 16) -> None:
        import faiss

        x = np.ascontiguousarray(descriptors, np.float32)
        n, d = x.shape
        nlist = nlist or max(1, min(int(math.sqrt(n)), n // 39))  # faiss wants >= 39 training points a list
        quantizer = faiss.IndexFlatIP(d)
        self.index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                   faiss.METRIC_INNER_PRODUCT)
        self.quantizer = quantizer  # kept alive with the index
        # k-means on at most 64 points a list: the lists' quality, at a bounded training time
        train = x if n <= 64 * nlist else x[np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
        self.index.train(train)
        self.index.add(x)
        self.index.nprobe = min(nprobe, nlist)

    def search(self, query: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
        s, i = self.index.search(np.asarray(query, np.float32).reshape(1, -1), m)
        keep = i[0] >= 0
        return s[0][keep], i[0][keep]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def is_upscale_of(candidate: np.ndarray, lr: np.ndarray) -> bool:
    """Whether ``candidate`` is an upscale of ``lr`` (bicubic or alike): of the LR's aspect, larger, its downscale to
    the LR's size matches the LR (:data:`UPSCALE_MATCH_DB`) and it has no detail beyond the LR's band (down and up
    again it is unchanged, :data:`UPSCALE_DETAIL_DB`). The LR's true HR matches the LR too, but has that detail."""
    (h, w), (ch, cw) = lr.shape[:2], candidate.shape[:2]
    if ch <= h or cw <= w or abs(ch * w - cw * h) > max(ch, cw) * SCALE:  # not larger, or another aspect
        return False
    down = pil_bicubic(np.ascontiguousarray(candidate), (w, h))
    if psnr(down, lr) < UPSCALE_MATCH_DB:
        return False
    return psnr(pil_bicubic(down, (cw, ch)), candidate) >= UPSCALE_DETAIL_DB


class _Queries:
    """The LR's search queries at the re-rank's scale (relu3_1 of the upsampled, scaled LR)."""

    def __init__(self, net: RefSRNet, lr: torch.Tensor) -> None:
        h, w = lr.shape[-2:]
        self.factor = min(1.0, RERANK_QUERY_SIDE / max(h, w))
        small = scaled(lr, max(1, round(max(h, w) * self.factor)), multiple=1)
        self.features = net.search_features(make_lr_up(small))


@torch.no_grad()
def _relevance(net: RefSRNet, queries: _Queries, candidate: torch.Tensor) -> torch.Tensor:
    """Each LR patch's best relevance (cosine, TTSR Eq. 4) against ``candidate`` [1, 3, H, W], at the re-rank scale
    (the network's own spec: its geometry, the exact dense search)."""
    h, w = candidate.shape[-2:]
    side = min(queries.factor, SCALE * RERANK_KEY_SIDE / max(h, w)) * max(h, w)
    spec = net.search_spec(method='dense')
    multiple = SCALE * spec.stride
    small = scaled(candidate, max(multiple * 3, round(side)), multiple=multiple)
    keys = net.encode_search_keys(small)
    if spec.patch_count(*keys.shape[-2:]) < 1 or min(keys.shape[-2:]) < spec.window:
        return torch.zeros(queries.features.shape[-2:]).flatten()
    scores, _ = search_references(queries.features, [keys], spec, top_k=1)
    return scores[0, 0].float()


def greedy_coverage(relevance: Sequence[torch.Tensor], k: int, tolerance: float = DUPLICATE_TOLERANCE
                    ) -> Tuple[List[Tuple[int, float]], List[int]]:
    """Greedy choice of up to ``k`` candidates (each a vector of the LR patches' best relevance against it) by how
    much each raises the mean over the LR's patches of the best relevance among those chosen: ([(candidate, gain)],
    near-duplicates left out). Where no candidate raises it by more than :data:`GAIN_FLOOR` (the chosen ones already
    cover the LR), the next is the one with the highest mean relevance of its own. A candidate whose relevance vector
    differs from a chosen one's by at most ``tolerance`` on average offers the same patches: a near-duplicate, left
    out. Ties: the earlier candidate (the shortlist's order)."""
    if not relevance:
        return [], []
    own = [float(r.mean()) for r in relevance]
    covered = torch.zeros_like(relevance[0])
    left = list(range(len(relevance)))
    chosen: List[Tuple[int, float]] = []
    duplicates: List[int] = []
    while left and len(chosen) < k:
        base = float(covered.mean())
        gains = {c: float(torch.maximum(covered, relevance[c]).mean()) - base for c in left}
        best = max(left, key=lambda c: (gains[c] > GAIN_FLOOR, gains[c] if gains[c] > GAIN_FLOOR else own[c], -c))
        left.remove(best)
        if any(float((relevance[best] - relevance[c]).abs().mean()) <= tolerance for c, _ in chosen):
            duplicates.append(best)
            continue
        chosen.append((best, gains[best]))
        covered = torch.maximum(covered, relevance[best])
    return chosen, duplicates


Reader = Callable[[str], np.ndarray]


def select_references(net: RefSRNet, lr_rgb: np.ndarray, index: GalleryIndex, k: int = DEFAULT_REFS_PER_IMAGE,
                      shortlist: int = DEFAULT_SHORTLIST, device: str = 'cpu', read: Reader = read_image,
                      faiss_index: Optional[FaissShortlist] = None,
                      duplicate_tolerance: float = DUPLICATE_TOLERANCE) -> Selection:
    """Up to ``k`` references for the uint8 RGB image ``lr_rgb`` from ``index`` (see the module docstring): the
    library entry point that the folder code, the video loop (per frame) and the web page call. ``shortlist`` (M):
    candidates re-ranked (at least ``k``); ``read``: how a gallery file is read; ``faiss_index``: a
    :class:`FaissShortlist` over ``index``, made once by the caller for many LR images (else the exact product, or
    faiss made for this call above :data:`FAISS_ABOVE`)."""
    if k < 1:
        raise ValueError(f'refs_per_image must be >= 1, got {k}')
    if shortlist < 1:
        raise ValueError(f'shortlist must be >= 1, got {shortlist}')
    if not len(index):
        raise ValueError('the gallery index is empty')
    out = Selection()
    if k > len(index):
        out.notes.append(f'{k} references per image asked for, the gallery has {len(index)} image(s): using them all')
    m = min(len(index), max(shortlist, k))
    with torch.no_grad():
        lr = to_unit_tensor(lr_rgb, device)
        query = describe_tensor(net, lr).cpu().numpy()
        if faiss_index is None and len(index) > FAISS_ABOVE and faiss_available():
            faiss_index = FaissShortlist(index.descriptors)
        s_scores, rows = (faiss_index.search(query, m) if faiss_index is not None
                          else shortlist_exact(index.descriptors, query, m))
        queries = _Queries(net, lr)
        cands, relevance = [], []
        for s, row in zip(s_scores, rows):
            path = index.paths[int(row)]
            try:
                img = read(path)
            except (ImageReadError, OSError, ValueError) as err:
                out.notes.append(f'{path}: left out, cannot be read now ({err})')
                continue
            if is_upscale_of(img, lr_rgb):
                out.notes.append(f'{path}: left out, an upscale of the LR itself (no detail beyond it)')
                continue
            cands.append((path, float(s)))
            relevance.append(_relevance(net, queries, to_unit_tensor(img, device)))
    picked, duplicates = greedy_coverage(relevance, k, duplicate_tolerance)
    for rank, (c, gain) in enumerate(picked, start=1):
        out.chosen.append(ChosenReference(cands[c][0], rank, gain, cands[c][1], float(relevance[c].mean())))
    out.notes += [f'{cands[c][0]}: left out, a near-duplicate of a chosen reference (adds under '
                  f'{duplicate_tolerance:g} relevance)' for c in duplicates]
    return out


def selection_rows(lr_name: str, selection: Selection) -> List[Dict[str, object]]:
    """The rows of references.csv for one LR image."""
    return [{'lr': lr_name, 'rank': c.rank, 'reference': c.path, 'score': f'{c.score:.6f}',
             'shortlist_score': f'{c.shortlist_score:.6f}', 'rerank_score': f'{c.rerank_score:.6f}'}
            for c in selection.chosen]

