"""Approximate texture search for large inputs: reduced-dimension retrieval, then exact search in candidate windows.

Same contract as every search method (:class:`extracter.search.base.SearchMethod`), registered as ``approximate``:
for every LR patch (unfold with window k, stride s, padding p of relu3_1 features) the top-k reference patches by the
cosine relevance of TTSR Eq. 4, ``r_ij = <q_i / |q_i|, k_j / |k_j|>``, returned as ``(scores, index)``, each
[N, top_k, L], rank-sorted; the scores are the exact relevances of the chosen patches.

Method (reduced-descriptor retrieval, then exact search in shared candidate windows), chosen by measurement on real
VGG relu3_1 features (docs/benchmarks/search/README.md has the numbers, also of the alternatives):

1. Reduced descriptors, a factorised PCA fitted on the reference: the C channels of every pixel are projected on
   their top ``channel_dims`` uncentred principal directions (the subspace that best preserves inner products), then
   the channel-reduced k x k patches on their top ``patch_dims`` directions. A reduced query dotted with a reduced
   key, divided by the key's EXACT norm, approximates r_ij up to the query's (rank-irrelevant) norm.
2. Retrieval: the LR patches of a sub-grid (every ``query_step``-th along each axis) against the reference patches of
   a sub-grid (every ``key_step``-th) in the reduced space, keeping the top ``refine`` of each, re-scored on the
   channel-reduced patches (c' k^2 dimensions, gathered per query) to keep the best ``candidates``. The retrieval is
   the only quadratic part, patch_dims / (C k^2 query_step^2 key_step^2) of the exact search's work.
3. Candidate windows: the LR patch grid is cut into ``tile`` x ``tile`` tiles; a tile's candidate set is the union
   of the (2 ``jitter`` + 1)^2 windows around the retrieved matches of its sub-grid queries and of those one step
   around it, rank-major (every query's first match before any second one), capped at ``max_candidates``. Sharing
   the set propagates matches between neighbouring queries (as coarse-to-fine and PatchMatch searches do), and the
   windows catch the near-ties next to a retrieved match (relevances of neighbouring reference patches differ by
   less than 1e-3 for about half of the LR patches of real pairs).
4. Exact search in the windows. (a) Where a tile's candidate set holds more than ``prefilter`` per query, each
   query keeps its top ``prefilter`` candidates by the channel-reduced relevance (c' k^2 dimensions, a quarter of the
   exact work at 64 of 256 channels) and the tile keeps their union. (b) The tile's full patches against those
   candidates, both gathered straight from channels-last feature maps, one [tile^2, C k^2] x [C k^2, M] matmul per
   tile, and the exact cosine relevance (dot product times the inverse patch norms, box sums of squared features as
   in the chunked search); top-k. The scores are therefore the exact relevances of the chosen patches, and a query's
   result equals the exact search's whenever its exact top-k lies in its tile's (prefiltered) candidate set.

When the candidates cover everything the result is the exact search's: the exact chunked search is run when the
reference has at most ``max_candidates`` patches, or when L x Lr <= ``exact_below`` (small inputs). A ``jitter`` at
least the reference grid's larger side also makes every window the whole reference; with ``fallback=False`` the
tiled path then equals the exact search (ties aside), which the tests check.

Memory: the reduced key descriptors (Lr / key_step^2 x patch_dims floats), ``query_chunk_size`` x that many
retrieval relevances, one tile's candidate patches (``max_candidates`` x C k^2 floats) and its tile^2 x M relevances.
Never an L x Lr matrix.

The reference's side of steps 1-4 (its exact inverse patch norms, its padded channels-last copy, the PCA fitted on it
and its reduced key descriptors) depends on the reference alone: :func:`prepare_reduced_index` makes it once, as a
:class:`ReducedIndex` (the method's ``prepare``, kept by the inference's cache of encoded references), and every
search of that reference reads it; a search without it computes the same (bit for bit: the same code, the same
generator draws, the same bands).
"""

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Hashable, Optional, Tuple

import torch
import torch.nn.functional as F

from extracter.search.base import SearchMethod, register_method
from extracter.search.methods.exact import chunked_search_bytes
from extracter.search.patches import Scratch, chunked_search, grid_size, inv_patch_norms, merge_topk, patch_rows

__all__ = ['ApproximateSettings', 'approximate_search', 'exact_search_queries', 'grid_size', 'recall_at_1',
           'recall_at_k', 'uses_exact', 'AUTO_APPROXIMATE_ABOVE', 'auto_search_mode', 'exact_multiply_adds',
           'approximate_search_bytes', 'ReducedIndex', 'ReducedReference', 'prepare_reduced_index',
           'reduced_index_bytes', 'index_key']

# ``search mode auto`` (infer.py's default): the approximate search where the exact search would cost more than this
# many multiply-adds (LR patches x reference patches x C k^2), the exact one below. 2^39 ~ 5.5e11, ~10-15 s of exact
# search on one CPU core: at window 6 / stride 2 outputs above ~700 x 700 with a same-size reference (1024: 2.5e12),
# at the demo model's 3/1 above ~500 x 500 (512: 6.2e11; a 720 x 480 frame: 1.1e12). Kept after the idle-machine
# benchmark (docs/benchmarks/search/README.md, 2026-12-02, and again with the defaults of 2026-12-03): from the
# smallest measured size above it (512 at 3/1/1) up, the approximate search is faster (search 3.0-4.1x at 512,
# 8.9-10.8x at 1024) and the demo model's SR within 0.001 dB PSNR-Y of the exact search's on every pair with ground
# truth.
AUTO_APPROXIMATE_ABOVE = 1 << 39
BACKENDS = ('torch', 'faiss')


@dataclass(frozen=True)
class ApproximateSettings:
    """The approximate search's settings (``search.approximate`` in the options); see :func:`approximate_search`
    for each. Checked on construction: a bad value is a ``ValueError`` naming the field."""

    channel_dims: int = 64
    patch_dims: int = 256
    candidates: Optional[int] = None
    refine: int = 48
    query_step: int = 1
    key_step: int = 2
    jitter: int = 1
    tile: int = 8
    max_candidates: int = 4096
    prefilter: int = 16
    exact_below: int = 1 << 24
    fit_samples: int = 8192
    seed: int = 0
    fallback: bool = True
    backend: str = 'torch'

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == 'backend':
                if value not in BACKENDS:
                    raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {value!r}')
            elif f.name == 'fallback':
                if not isinstance(value, bool):
                    raise ValueError(f'fallback must be true or false, got {value!r}')
            elif not (value is None and f.name == 'candidates'):
                least = 0 if f.name in ('jitter', 'exact_below', 'seed', 'refine', 'prefilter') else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise ValueError(f'{f.name} must be an integer >= {least}, got {value!r}')

    def resolved_candidates(self, stride: int) -> int:
        """Matches kept per query: the given number, else 8 per feature pixel of stride (8 at stride 1, 16 at 2: the
        reference sub-grid, ``key_step`` patches apart, is that much sparser in feature pixels)."""
        return 8 * stride if self.candidates is None else self.candidates


def exact_multiply_adds(n_query: int, n_keys: int, channels: int, window: int) -> int:
    """Multiply-adds of the exact search: every LR patch against every reference patch, C k^2 each."""
    return n_query * n_keys * channels * window * window


def auto_search_mode(n_query: int, n_keys: int, channels: int, window: int) -> str:
    """``'approximate'`` where the exact search is expensive (:data:`AUTO_APPROXIMATE_ABOVE`), else ``'exact'``."""
    return 'approximate' if exact_multiply_adds(n_query, n_keys, channels, window) > AUTO_APPROXIMATE_ABOVE \
        else 'exact'


def uses_exact(n_query: int, n_keys: int, settings: ApproximateSettings) -> bool:
    """Whether :func:`approximate_search` runs the exact search here (its candidates would cover everything or the
    input is small; see ``fallback``)."""
    return settings.fallback and (n_query * n_keys <= settings.exact_below or n_keys <= settings.max_candidates)


def approximate_search_bytes(lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], channels: int, window: int,
                             stride: int, padding: int, settings: ApproximateSettings, query_chunk_size: int,
                             itemsize: int = 4, prepared: bool = False) -> Optional[int]:
    """Peak transient bytes of :func:`approximate_search` for one LR feature map of ``lr_hw`` against one reference
    map of ``ref_hw`` (relu3_1 sizes, batch 1), besides its inputs and its result; None where it runs the exact
    chunked search instead (:func:`uses_exact`). A slight over-estimate: the padded channels-last copy of both maps,
    the reduced maps and descriptors, then the larger of the retrieval block and a tile's work. ``prepared``: the
    search is given the reference's reduced index (:func:`reduced_index_bytes`, counted apart), and makes none of
    the reference's side (its copy, PCA fit and descriptors)."""
    k, s, p = window, stride, padding
    gh, gw = grid_size(*lr_hw, k, s, p)
    rgh, rgw = grid_size(*ref_hw, k, s, p)
    if uses_exact(gh * gw, rgh * rgw, settings):
        return None
    qs, ks = settings.query_step, settings.key_step
    n_q = -(-gh // qs) * -(-gw // qs)
    n_k = -(-rgh // ks) * -(-rgw // ks)
    c_red = min(settings.channel_dims, channels)
    d = min(settings.patch_dims, c_red * k * k)
    area = (lr_hw[0] + 2 * p) * (lr_hw[1] + 2 * p)
    rarea = (ref_hw[0] + 2 * p) * (ref_hw[1] + 2 * p)
    own = 0 if prepared else 1  # whether the search makes the reference's side itself
    maps = itemsize * channels * (area + own * rarea)  # one zero-padded channels-last copy of each map
    squares = itemsize * channels * max(lr_hw[0] * lr_hw[1], own * ref_hw[0] * ref_hw[1])  # the patch norms, before
    n_cand = min(settings.resolved_candidates(s), n_k)
    n_ret = min(max(settings.refine, n_cand), n_k)
    cands = n_q * n_ret * (itemsize + 2 * 8) + n_q * n_cand * (itemsize + 3 * 8)  # retrieved, kept (rows, columns)
    # the patches unfolded per band of descriptors: the LR's (qs rows apart) and the reference's (ks rows apart)
    band = max(_band_rows(query_chunk_size, gw // qs) * qs * gw, own * _band_rows(query_chunk_size, rgw) * ks * rgw)
    reduce = itemsize * (c_red * max(area, own * rarea) + 2 * c_red * k * k * band
                         + own * settings.fit_samples * c_red * k * k)
    retrieval = itemsize * (own * 2 * n_k * d + n_q * d + min(query_chunk_size, n_q) * n_k) + reduce
    if n_ret > n_cand:  # the reduced maps (channels-last) and one block of gathered patches (+ their indices)
        retrieval = max(retrieval, itemsize * (c_red * (area + rarea) + 3 * (1 << 24)))
    t2 = settings.tile ** 2
    # a tile's candidate entries before de-duplication: its sub-grid queries and those one step around, each window
    windows = (-(-settings.tile // qs) + 2) ** 2 * n_cand * (2 * settings.jitter + 1) ** 2
    cap = settings.max_candidates
    full = min(cap, t2 * settings.prefilter) if settings.prefilter else cap  # candidates of the exact step
    tiles = (itemsize * (2 * t2 + 2 * full) * channels * k * k
             + itemsize * t2 * cap + 8 * rgh * rgw + 3 * 8 * windows)
    if settings.prefilter:  # the channel-reduced maps, and a tile's channel-reduced patches (and their indices)
        tiles += itemsize * c_red * (area + rarea) + (itemsize * c_red + 8) * (t2 + cap) * k * k
    return max(squares, maps + cands + max(retrieval, tiles))


def _band_rows(chunk: int, columns: int) -> int:
    """Patch-grid rows per band of descriptors: about ``chunk`` descriptors of ``columns`` per row."""
    return max(1, chunk // max(1, columns))


@dataclass(frozen=True)
class ReducedReference:
    """The reduced index of one reference map (one batch element): the part of :func:`approximate_search` that
    depends on the reference alone, computed once and read by every search of it (never written)."""

    k_inv: torch.Tensor  # [Lr] the exact inverse patch norms
    ref_cl: torch.Tensor  # [H+2p, W+2p, C] the zero-padded channels-last map (gathered by the tiles' exact step)
    proj: torch.Tensor  # [c', C] the channel PCA (step 1)
    patch_proj: Optional[torch.Tensor]  # [c' k^2, d] the patch PCA; None when c' k^2 <= patch_dims
    keys_t: torch.Tensor  # [d, Lr'] the reduced key descriptors over the exact norms, transposed (the retrieval's)


@dataclass(frozen=True)
class ReducedIndex:
    """What :func:`prepare_reduced_index` makes of a reference map [N, C, H, W]: one :class:`ReducedReference` per
    batch element, and what they were made with (:func:`index_key`): a search with other settings must not read
    them."""

    refs: Tuple[ReducedReference, ...]
    made_with: Tuple

    def check(self, key: Tuple, ref_feat: torch.Tensor) -> None:
        """A ``ValueError`` unless this index was made with ``key`` for a map of ``ref_feat``'s shape."""
        if key != self.made_with:
            raise ValueError(f'the prepared reduced index was made with {self.made_with} (geometry, channel_dims, '
                             f'patch_dims, key_step, fit_samples, seed, chunk); this search has {key}')
        n, c, h, w = ref_feat.shape
        p = key[0][2]
        if len(self.refs) != n or tuple(self.refs[0].ref_cl.shape) != (h + 2 * p, w + 2 * p, c):
            raise ValueError(f'the prepared reduced index was made for {len(self.refs)} reference map(s) of padded '
                             f'shape {tuple(self.refs[0].ref_cl.shape)}, not for {tuple(ref_feat.shape)}')


def index_key(geometry: Tuple[int, int, int], settings: ApproximateSettings, query_chunk_size: int) -> Tuple:
    """What a reduced index depends on besides the reference: the geometry, the settings of the reduction and the
    band size of its descriptors (``query_chunk_size``: a band's matmul is the same one with or without preparing,
    so that the result is bit-identical)."""
    cfg = settings
    return (tuple(geometry), cfg.channel_dims, cfg.patch_dims, cfg.key_step, cfg.fit_samples, cfg.seed,
            int(query_chunk_size))


def _reduced_reference(ref_feat: torch.Tensor, window: int, stride: int, padding: int, cfg: ApproximateSettings,
                       query_chunk_size: int, generator: torch.Generator) -> ReducedReference:
    """The reduced index of one reference map ``ref_feat`` [1, C, H, W]: its exact inverse patch norms, its padded
    channels-last copy, the PCA fitted on it (drawing its patch sample from ``generator``) and its reduced key
    descriptors."""
    k, s, p = window, stride, padding
    rgw = grid_size(*ref_feat.shape[-2:], k, s, p)[1]
    k_inv = inv_patch_norms(ref_feat, k, s, padding=p)[0]  # [Lr]
    ref_cl = _channels_last_padded(ref_feat[0], p)
    proj, patch_proj = _fit_reduction(ref_cl, k, s, cfg.channel_dims, cfg.patch_dims, cfg.fit_samples, generator)
    keys = _descriptors(ref_cl, proj, patch_proj, k, s, cfg.key_step, k_inv, rgw,
                        _band_rows(query_chunk_size, rgw))  # [Lr', d]
    return ReducedReference(k_inv, ref_cl, proj, patch_proj, keys.t().contiguous())


@torch.no_grad()
def prepare_reduced_index(ref_feat: torch.Tensor, window: int, stride: int, padding: int,
                          settings: Optional[ApproximateSettings] = None, *, query_chunk_size: int = 4096,
                          **overrides) -> Optional[ReducedIndex]:
    """The reduced index of a reference map [N, C, H, W] for :func:`approximate_search` (its ``prepared``), to share
    between the searches of that reference (the LR images, frames or tiles of a run); the searches' results are
    bit-identical to those that compute it themselves. None where the reference alone makes every search of it run
    the exact search (``fallback`` and at most ``max_candidates`` patches): nothing to keep. Where it is made, a
    search may still run the exact search for a small LR (L x Lr <= ``exact_below``) and leave it unused: it is made
    eagerly (:func:`reduced_index_bytes`: about 1.1-1.3 times the map), as the cache of encoded references counts
    what it holds when it takes it.

    The PCA's patch sample comes from one generator seeded with ``seed``, drawn from batch element after batch
    element, as the search without an index draws it; the query side draws nothing."""
    cfg = dataclasses.replace(settings or ApproximateSettings(), **overrides)
    k, s, p = int(window), int(stride), int(padding)
    rgh, rgw = grid_size(*ref_feat.shape[-2:], k, s, p)
    if cfg.fallback and rgh * rgw <= cfg.max_candidates:
        return None
    gen = torch.Generator().manual_seed(cfg.seed)
    refs = tuple(_reduced_reference(ref_feat[b:b + 1], k, s, p, cfg, query_chunk_size, gen)
                 for b in range(ref_feat.size(0)))
    return ReducedIndex(refs, index_key((k, s, p), cfg, query_chunk_size))


def reduced_index_bytes(ref_hw: Tuple[int, int], channels: int, window: int, stride: int, padding: int,
                        settings: ApproximateSettings, itemsize: int = 4) -> int:
    """Bytes of :func:`prepare_reduced_index`'s index of one reference map of ``ref_hw`` (relu3_1 size, batch 1): the
    padded channels-last copy, the inverse norms, the two projections and the reduced key descriptors; 0 where it
    makes none."""
    k, s, p = window, stride, padding
    rgh, rgw = grid_size(*ref_hw, k, s, p)
    if settings.fallback and rgh * rgw <= settings.max_candidates:
        return 0
    ks = settings.key_step
    c_red = min(settings.channel_dims, channels)
    d = min(settings.patch_dims, c_red * k * k)
    patch_proj = c_red * k * k * d if c_red * k * k > settings.patch_dims else 0
    n_k = -(-rgh // ks) * -(-rgw // ks)
    ref_cl = channels * (ref_hw[0] + 2 * p) * (ref_hw[1] + 2 * p)
    return itemsize * (ref_cl + rgh * rgw + c_red * channels + patch_proj + d * n_k)


def _pixel_offsets(window: int, width: int, device) -> torch.Tensor:
    """Flat offsets of a patch's pixels in a channels-last padded map of row length ``width``, (dy, dx) order."""
    ar = torch.arange(window, device=device)
    return (ar[:, None] * width + ar[None, :]).view(-1)


def _gather_patches(flat: torch.Tensor, starts: torch.Tensor, offsets: torch.Tensor,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Patches [n, k*k*C] (ordered dy, dx, c) from a channels-last padded map ``flat`` [Hp*Wp, C]; ``starts``: the flat
    index of each patch's top-left pixel. ``out``: a contiguous [n * k*k, C] buffer to gather into."""
    idx = (starts[:, None] + offsets[None, :]).view(-1)
    if out is None:
        return flat.index_select(0, idx).view(starts.numel(), -1)
    return torch.index_select(flat, 0, idx, out=out).view(starts.numel(), -1)


def _patch_starts(index: torch.Tensor, grid_w: int, stride: int, width: int) -> torch.Tensor:
    """Flat top-left pixel index (in a padded map of row length ``width``) of patches with flat grid ``index``."""
    return torch.div(index, grid_w, rounding_mode='floor') * (stride * width) + (index % grid_w) * stride


@torch.no_grad()
def exact_search_queries(lr_feat: torch.Tensor, ref_feat: torch.Tensor, window: int, stride: int, padding: int,
                         top_k: int, query_index: torch.Tensor, key_chunk_size: int = 8192,
                         query_chunk_size: int = 2048) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact search for a subset of LR patches (flat grid indices ``query_index`` [Q], shared by the batch)
    against every reference patch: (scores, index), each [N, top_k, Q]. Same arithmetic as the chunked search."""
    k, s, p = window, stride, padding
    n, c = lr_feat.shape[:2]
    lr_pad = F.pad(lr_feat, (p, p, p, p))
    ref_pad = F.pad(ref_feat, (p, p, p, p))
    _, gw = grid_size(*lr_feat.shape[-2:], k, s, p)
    q_inv = inv_patch_norms(lr_pad, k, s)
    k_inv = inv_patch_norms(ref_pad, k, s)
    rgh, rgw = grid_size(*ref_feat.shape[-2:], k, s, p)
    width = lr_pad.size(-1)
    offsets = _pixel_offsets(k, width, lr_feat.device)
    query_index = query_index.to(lr_feat.device)
    scores = lr_feat.new_empty(n, top_k, query_index.numel())
    index = torch.empty(n, top_k, query_index.numel(), dtype=torch.long, device=lr_feat.device)
    key_rows = max(1, key_chunk_size // rgw)
    for b in range(n):
        flat = lr_pad[b].permute(1, 2, 0).reshape(-1, c)
        for i0 in range(0, query_index.numel(), query_chunk_size):
            qi = query_index[i0:i0 + query_chunk_size]
            # (dy, dx, c) order -> unfold's (c, dy, dx) order so that the keys can come from F.unfold
            query = _gather_patches(flat, _patch_starts(qi, gw, s, width), offsets)
            query = query.view(-1, k * k, c).transpose(1, 2).reshape(qi.numel(), -1)
            best_s = best_i = None
            for r0 in range(0, rgh, key_rows):
                r1 = min(rgh, r0 + key_rows)
                keys = patch_rows(ref_pad[b:b + 1], k, s, r0, r1)[0]  # [C*k*k, rows*rgw]
                rel = (query @ keys).mul_(k_inv[b, None, r0 * rgw:r1 * rgw])
                blk_s, blk_i = torch.topk(rel, min(top_k, rel.size(1)), dim=1)
                best_s, best_i = merge_topk(best_s, best_i, blk_s, blk_i + r0 * rgw, top_k)
            scores[b, :, i0:i0 + qi.numel()] = (best_s * q_inv[b, qi, None]).t()
            index[b, :, i0:i0 + qi.numel()] = best_i.t()
    return scores, index


def _second_moment_top(x: torch.Tensor, dims: int) -> torch.Tensor:
    """[D, dims]: the top eigenvectors of the uncentred second moment of the rows of ``x`` [n, D] (the subspace that
    best preserves inner products), largest first."""
    _, vecs = torch.linalg.eigh((x.t() @ x).double())
    return vecs[:, -dims:].flip(1).contiguous()


def _channels_last_padded(x: torch.Tensor, padding: int) -> torch.Tensor:
    """A map [C, H, W] as a zero-padded channels-last copy [H+2p, W+2p, C] (the one copy the search makes of it)."""
    c, h, w = x.shape
    out = x.new_zeros(h + 2 * padding, w + 2 * padding, c)
    out[padding:padding + h, padding:padding + w] = x.permute(1, 2, 0)
    return out


def _reduce_channels(x_cl: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """The channel-reduced map [H, W, c'] of a channels-last map ``x_cl`` [H, W, C] (``proj`` [c', C])."""
    return (x_cl.reshape(-1, x_cl.size(-1)) @ proj.t()).view(x_cl.size(0), x_cl.size(1), proj.size(0))


def _fit_reduction(ref_cl: torch.Tensor, window: int, stride: int, channel_dims: int, patch_dims: int,
                   fit_samples: int, generator: torch.Generator) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Factorised PCA of the reference patches: per-pixel channel directions P [c', C], then patch directions W
    [c' k^2, d] of the channel-reduced patches (``None`` when c' k^2 <= d). Fitted on at most ``fit_samples``
    pixels / patches of the padded channels-last reference ``ref_cl`` [H, W, C]."""
    c = ref_cl.size(-1)
    pixels = ref_cl.view(-1, c)
    step = max(1, pixels.size(0) // fit_samples)
    proj = _second_moment_top(pixels[::step], min(channel_dims, c)).t().to(ref_cl.dtype)  # [c', C]
    dc = proj.size(0) * window * window
    if dc <= patch_dims:
        return proj, None
    red = _reduce_channels(ref_cl, proj)
    gh, gw = (ref_cl.size(0) - window) // stride + 1, (ref_cl.size(1) - window) // stride + 1
    pick = torch.randperm(gh * gw, generator=generator)[:fit_samples].to(ref_cl.device)
    # only the sampled patches are gathered (never all reference patches at once), in unfold's (c, dy, dx) order
    patches = _gather_patches(red.reshape(-1, proj.size(0)), _patch_starts(pick, gw, stride, red.size(1)),
                              _pixel_offsets(window, red.size(1), ref_cl.device))
    patches = patches.view(-1, window * window, proj.size(0)).transpose(1, 2).reshape(pick.numel(), -1)
    return proj, _second_moment_top(patches, patch_dims).to(ref_cl.dtype)


def _descriptors(x_cl: torch.Tensor, proj: torch.Tensor, patch_proj: Optional[torch.Tensor], window: int,
                 stride: int, step: int, inv_norm: torch.Tensor, grid_w: int, rows_per_block: int) -> torch.Tensor:
    """Reduced descriptors [n, d] of the patches on every ``step``-th row and column of the patch grid of the padded
    channels-last map ``x_cl`` [H, W, C], divided by the exact patch norms (``inv_norm`` [L]). Computed in bands of
    patch rows."""
    red = _reduce_channels(x_cl, proj).permute(2, 0, 1)[None]  # [1, c', H, W], a view (bands are unfolded)
    gh = (x_cl.size(0) - window) // stride + 1
    rows = torch.arange(0, gh, step, device=x_cl.device)
    cols = torch.arange(0, grid_w, step, device=x_cl.device)
    out = []
    for b0 in range(0, rows.numel(), rows_per_block):
        r = rows[b0:b0 + rows_per_block]
        r0, r1 = int(r[0]), int(r[-1]) + 1
        band = patch_rows(red, window, stride, r0, r1)[0].view(-1, r1 - r0, grid_w)[:, r - r0][:, :, cols]
        band = band.reshape(band.size(0), -1)  # [c' k^2, n]
        desc = band.t() if patch_proj is None else band.t() @ patch_proj
        flat = (r[:, None] * grid_w + cols[None, :]).view(-1)
        out.append(desc * inv_norm[flat, None])
    return torch.cat(out)


def _refine(red_lr: torch.Tensor, red_ref: torch.Tensor, window: int, stride: int, q_index: torch.Tensor,
            grid_w: int, ref_grid_w: int, k_inv: torch.Tensor, cand_i: torch.Tensor, keep: int,
            block_floats: int = 1 << 24) -> Tuple[torch.Tensor, torch.Tensor]:
    """Re-score every query's retrieved matches ``cand_i`` [Q, R] (flat reference patch indices) by the dot product of
    the channel-reduced patches (c' k^2 dimensions: without the patch PCA's loss) over the exact key norm, and keep
    the best ``keep``: (scores, indices) [Q, keep], sorted. Per query, gathered straight from the padded
    channels-last channel-reduced maps ``red_lr`` / ``red_ref`` [H, W, c'], in blocks of about ``block_floats``
    gathered floats."""
    c_red = red_lr.size(-1)
    q_off = _pixel_offsets(window, red_lr.size(1), red_lr.device)
    k_off = _pixel_offsets(window, red_ref.size(1), red_lr.device)
    flat_lr, flat_ref = red_lr.reshape(-1, c_red), red_ref.reshape(-1, c_red)
    n_q, n_r = cand_i.shape
    block = max(1, block_floats // (n_r * c_red * window * window))
    out_s = red_lr.new_empty(n_q, keep)
    out_i = torch.empty(n_q, keep, dtype=torch.long, device=red_lr.device)
    scratch, kk = Scratch(red_lr), window * window
    for i0 in range(0, n_q, block):
        ci = cand_i[i0:i0 + block]
        nb = ci.size(0)
        query = _gather_patches(flat_lr, _patch_starts(q_index[i0:i0 + block], grid_w, stride, red_lr.size(1)), q_off,
                                scratch.get('query', nb * kk, c_red))
        keys = _gather_patches(flat_ref, _patch_starts(ci.reshape(-1), ref_grid_w, stride, red_ref.size(1)), k_off,
                               scratch.get('keys', nb * n_r * kk, c_red))
        rel = torch.bmm(keys.view(nb, n_r, -1), query[:, :, None], out=scratch.get('rel', nb, n_r, 1))[:, :, 0]
        rel.mul_(k_inv[ci])
        top_s, pos = torch.topk(rel, keep, dim=1)
        out_s[i0:i0 + nb] = top_s
        out_i[i0:i0 + nb] = ci.gather(1, pos)
    return out_s, out_i


def _retrieve_torch(queries: torch.Tensor, keys_t: torch.Tensor, n_cand: int, chunk: int, out_s: torch.Tensor,
                    out_i: torch.Tensor) -> None:
    """Top ``n_cand`` keys (columns of ``keys_t`` [d, Lr']) of every query row [Q, d] by inner product, in blocks of
    ``chunk`` queries, into ``out_s`` / ``out_i`` [Q, n_cand]."""
    scratch = Scratch(queries)
    for i0 in range(0, queries.size(0), chunk):
        q = queries[i0:i0 + chunk]
        rel = torch.matmul(q, keys_t, out=scratch.get('rel', q.size(0), keys_t.size(1)))
        top_s, top_i = torch.topk(rel, n_cand, dim=1)
        out_s[i0:i0 + top_s.size(0)] = top_s
        out_i[i0:i0 + top_s.size(0)] = top_i


def _retrieve_faiss(queries: torch.Tensor, keys_t: torch.Tensor, n_cand: int, chunk: int, out_s: torch.Tensor,
                    out_i: torch.Tensor) -> None:
    """As :func:`_retrieve_torch` with faiss' exact inner-product index (CPU)."""
    import faiss

    index = faiss.IndexFlatIP(keys_t.size(0))
    index.add(keys_t.t().contiguous().numpy())
    for i0 in range(0, queries.size(0), chunk):
        top_s, top_i = index.search(queries[i0:i0 + chunk].contiguous().numpy(), n_cand)
        out_s[i0:i0 + top_s.shape[0]] = torch.from_numpy(top_s)
        out_i[i0:i0 + top_i.shape[0]] = torch.from_numpy(top_i)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _retrieval(backend: str, device: torch.device):
    """The retrieval function of ``backend``: faiss only on CPU and where installed (else the torch path, with a
    warning naming why)."""
    if backend == 'faiss':
        if torch.device(device).type != 'cpu':
            warnings.warn(f'approximate search: backend faiss works on CPU tensors, these are on {device}; '
                          'using the PyTorch retrieval', stacklevel=3)
        elif not faiss_available():
            warnings.warn('approximate search: backend faiss needs the optional package faiss-cpu '
                          "(pip install 'extracter[faiss]'); using the PyTorch retrieval", stacklevel=3)
        else:
            return _retrieve_faiss
    return _retrieve_torch


def _subgrid_index(gh: int, gw: int, step: int, device) -> torch.Tensor:
    rows = torch.arange(0, gh, step, device=device)
    cols = torch.arange(0, gw, step, device=device)
    return (rows[:, None] * gw + cols[None, :]).view(-1)


@torch.no_grad()
def approximate_search(lr_feat: torch.Tensor, ref_feat: torch.Tensor, window: int, stride: int, padding: int,
                       top_k: int = 1, settings: Optional[ApproximateSettings] = None, *,
                       query_chunk_size: int = 4096, exact_chunks: Tuple[int, int] = (4096, 8192),
                       prepared: Optional[ReducedIndex] = None, **overrides) -> Tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-k texture search with exact re-ranking (see the module docstring).

    Args:
        lr_feat: relu3_1 of the up-sampled LR [N, C, h, w] (queries); ref_feat: of the down-up-sampled reference
            [N, C, H, W] (keys).
        window, stride, padding, top_k: as in :class:`~extracter.search.spec.SearchSpec`.
        settings: :class:`ApproximateSettings` (default: its defaults); ``overrides``: any of its fields, replacing
            the value in ``settings``. The fields:

            - channel_dims: channels kept by the per-pixel PCA.
            - patch_dims: dimensions kept by the patch PCA of the channel-reduced patches (the retrieval dimension).
            - candidates: matches kept per query sub-grid point (their windows make the tiles' candidate sets);
              default (None) 8 per feature pixel of stride: 8 at 3/1/1, 16 at 6/2/2.
            - refine: when above ``candidates``, retrieve this many matches in the reduced space and keep the
              ``candidates`` best by the dot product of the channel-reduced patches (c' k^2 dimensions, the patch
              PCA's loss undone), per query; 0: keep the reduced space's top ``candidates``. On the DCSR pair at
              1024 / 6/2/2 (800 sampled queries) 32 raised recall@1 from 0.958 to 0.984 for 18% more CPU time: the
              reduced space's top-1 lies within a window of the exact top-1 for only 63% of the queries, the refined
              top-1 for 78% (top-8: 86% -> 96%).
            - query_step, key_step: retrieval sub-grids: every ``step``-th LR / reference patch along each axis
              (defaults: every query; every second reference patch, the windows covering the skipped ones).
              ``query_step=2`` at 3/1/1 lost 10 points of recall@1 on the real DCSR pair.
            - jitter: reference patches added on each side of every retrieved match (its (2 jitter + 1)^2 window).
            - tile: LR patches per side of a tile (the queries sharing one candidate set).
            - max_candidates: reference patches per tile at most (taken rank-major, by reduced score within a rank).
              When the reference has no more patches than this, the candidates cover everything: the exact search
              is run.
            - prefilter: where a tile has more candidates than this per query, each query's top ``prefilter`` by
              the channel-reduced relevance, and the exact step searches their union (at most tile^2 x prefilter);
              0: the exact step searches every candidate. At least ``top_k``.
            - exact_below: run the exact chunked search when L x Lr is at most this.
            - fit_samples: pixels and patches the PCA is fitted on; seed: the PCA's patch sample.
            - fallback: run the exact chunked search where the candidates would cover everything or the input is
              small (:func:`uses_exact`); ``False`` always takes the approximate path.
            - backend: ``'torch'`` (default, any device) or ``'faiss'`` (the optional ``faiss-cpu``, for the
              retrieval on CPU; absent or on another device: the torch path, with a warning).
        query_chunk_size: query descriptors per retrieval block (memory: this x reference sub-grid relevances).
        exact_chunks: (chunk_size, key_chunk_size) of the exact chunked search where it is run instead.
        prepared: the reference's :class:`ReducedIndex` (:func:`prepare_reduced_index` with these settings and
            ``query_chunk_size``; a ``ValueError`` otherwise), or None: the search computes it (the same result, bit
            for bit).

    Returns:
        scores, index: [N, top_k, L], rank-sorted; scores are exact cosine relevances.
    """
    cfg = dataclasses.replace(settings or ApproximateSettings(), **overrides) if overrides else (
        settings or ApproximateSettings())
    k, s, p = int(window), int(stride), int(padding)
    n, c, h, w = lr_feat.shape
    gh, gw = grid_size(h, w, k, s, p)
    rgh, rgw = grid_size(*ref_feat.shape[-2:], k, s, p)
    n_query, n_keys = gh * gw, rgh * rgw
    if n_keys < top_k:
        raise ValueError(f'the reference has {n_keys} patches, fewer than top_k={top_k}')
    if cfg.max_candidates < top_k:
        raise ValueError(f'max_candidates={cfg.max_candidates} must be at least top_k={top_k}')
    if query_chunk_size < 1:
        raise ValueError(f'query_chunk_size must be >= 1, got {query_chunk_size}')
    if uses_exact(n_query, n_keys, cfg):
        return chunked_search(lr_feat, ref_feat, k, s, p, top_k, *exact_chunks)
    if prepared is not None:
        prepared.check(index_key((k, s, p), cfg, query_chunk_size), ref_feat)
    query_step, key_step, jitter = cfg.query_step, cfg.key_step, cfg.jitter
    candidates = cfg.resolved_candidates(s)
    tile, max_candidates = cfg.tile, cfg.max_candidates
    prefilter = max(cfg.prefilter, top_k) if cfg.prefilter else 0
    retrieve = _retrieval(cfg.backend, lr_feat.device)
    dev = lr_feat.device
    width, rwidth = w + 2 * p, ref_feat.size(-1) + 2 * p
    offsets = _pixel_offsets(k, width, dev)
    roffsets = _pixel_offsets(k, rwidth, dev)
    q_sub = _subgrid_index(gh, gw, query_step, dev)
    k_sub = _subgrid_index(rgh, rgw, key_step, dev)
    sub_h, sub_w = (gh + query_step - 1) // query_step, (gw + query_step - 1) // query_step
    n_cand = min(candidates, k_sub.numel())
    band_rows = _band_rows(query_chunk_size, gw // query_step)
    win = torch.arange(-jitter, jitter + 1, device=dev)
    # without an index: made here, batch element after batch element, drawing from one generator as
    # prepare_reduced_index does (nothing else draws from it)
    gen = torch.Generator().manual_seed(cfg.seed) if prepared is None else None

    scores = lr_feat.new_empty(n, top_k, n_query)
    index = torch.empty(n, top_k, n_query, dtype=torch.long, device=dev)
    for b in range(n):
        # the exact inverse patch norms and one zero-padded channels-last copy of each map (read by every step);
        # 1. reduced descriptors: channel PCA per pixel, then PCA of the reduced patches; exact norms. The
        # reference's side is its reduced index, prepared or made now
        red = prepared.refs[b] if prepared is not None else _reduced_reference(
            ref_feat[b:b + 1], k, s, p, cfg, query_chunk_size, gen)
        k_inv, ref_cl, proj, patch_proj, keys_t = red.k_inv, red.ref_cl, red.proj, red.patch_proj, red.keys_t
        del red
        q_inv = inv_patch_norms(lr_feat[b:b + 1], k, s, padding=p)[0]  # [L]
        lr_cl = _channels_last_padded(lr_feat[b], p)
        # 2. retrieval: every query sub-grid point against every key sub-grid point, top-candidates
        n_ret = min(max(cfg.refine, n_cand), k_sub.numel())
        cand_s = lr_feat.new_empty(q_sub.numel(), n_ret)
        cand_i = torch.empty(q_sub.numel(), n_ret, dtype=torch.long, device=dev)
        queries = _descriptors(lr_cl, proj, patch_proj, k, s, query_step, torch.ones_like(q_inv), gw, band_rows)
        retrieve(queries, keys_t, n_ret, query_chunk_size, cand_s, cand_i)
        cand_i = k_sub[cand_i]
        del queries, keys_t
        # the channel-reduced maps (padded, channels-last), read by the re-scoring (2b) and the tiles' prefilter (4);
        # made again here (~1% of the search) rather than kept from the descriptors through the retrieval, its peak
        red_lr = _reduce_channels(lr_cl, proj) if n_ret > n_cand or prefilter else None
        red_ref = _reduce_channels(ref_cl, proj) if red_lr is not None else None
        if n_ret > n_cand:  # 2b. re-score the retrieved matches on the channel-reduced patches, keep the best
            cand_s, cand_i = _refine(red_lr, red_ref, k, s, q_sub, gw, rgw, k_inv, cand_i, n_cand)
        cand_s = cand_s.view(sub_h, sub_w, n_cand)
        cand_y = torch.div(cand_i, rgw, rounding_mode='floor').view(sub_h, sub_w, n_cand)
        cand_x = (cand_i % rgw).view(sub_h, sub_w, n_cand)

        # 3. tiles: exact search in the union of the retrieved matches (and their jitter windows) of the tile's
        # sub-grid queries and of those one step around it
        flat, rflat = lr_cl.view(-1, c), ref_cl.view(-1, c)
        scratch, kk = Scratch(lr_cl), k * k
        if prefilter:  # same padded widths as the full maps: the same pixel offsets
            c_red = red_lr.size(-1)
            red_flat, red_rflat = red_lr.view(-1, c_red), red_ref.view(-1, c_red)
        del red_lr, red_ref
        for y0 in range(0, gh, tile):
            y1 = min(gh, y0 + tile)
            sr0, sr1 = max(0, -(-y0 // query_step) - 1), min(sub_h, (y1 - 1) // query_step + 2)
            for x0 in range(0, gw, tile):
                x1 = min(gw, x0 + tile)
                sc0, sc1 = max(0, -(-x0 // query_step) - 1), min(sub_w, (x1 - 1) // query_step + 2)
                # priority: rank-major (every query's first match before any second match), by score within a rank
                blk_s = cand_s[sr0:sr1, sc0:sc1].reshape(-1, n_cand).t()
                order = torch.argsort(blk_s, dim=1, descending=True)
                cy = cand_y[sr0:sr1, sc0:sc1].reshape(-1, n_cand).t().gather(1, order).reshape(-1)
                cx = cand_x[sr0:sr1, sc0:sc1].reshape(-1, n_cand).t().gather(1, order).reshape(-1)
                if jitter:
                    cy = (cy[:, None, None] + win[None, :, None]).clamp_(0, rgh - 1).expand(-1, -1, win.numel())
                    cx = (cx[:, None, None] + win[None, None, :]).clamp_(0, rgw - 1).expand(-1, win.numel(), -1)
                cand = _first_unique((cy * rgw + cx).reshape(-1), n_keys)[:max_candidates]
                if cand.numel() < top_k:
                    extra = torch.ones(n_keys, dtype=torch.bool, device=dev)
                    extra[cand] = False
                    cand = torch.cat((cand, extra.nonzero().view(-1)[:top_k - cand.numel()]))
                qy = torch.arange(y0, y1, device=dev)
                qx = torch.arange(x0, x1, device=dev)
                q_idx = (qy[:, None] * gw + qx[None, :]).view(-1)
                nq = q_idx.numel()
                if prefilter and cand.numel() > prefilter * nq:
                    # 4a. prefilter: each query's top `prefilter` candidates by the channel-reduced relevance (c' k^2
                    # dimensions, a quarter of the work and of the gathered floats); the exact step sees their union
                    rq = _gather_patches(red_flat, _patch_starts(q_idx, gw, s, width), offsets,
                                         scratch.get('red_query', nq * kk, c_red))
                    rk = _gather_patches(red_rflat, _patch_starts(cand, rgw, s, rwidth), roffsets,
                                         scratch.get('red_keys', cand.numel() * kk, c_red))
                    rel = torch.matmul(rq, rk.t(), out=scratch.get('rel', nq, cand.numel()))
                    _, pos = torch.topk(rel.mul_(k_inv[None, cand]), prefilter, dim=1)
                    cand = cand[torch.unique(pos)]
                query = _gather_patches(flat, _patch_starts(q_idx, gw, s, width), offsets,
                                        scratch.get('query', nq * kk, c))
                key_patches = _gather_patches(rflat, _patch_starts(cand, rgw, s, rwidth), roffsets,
                                              scratch.get('keys', cand.numel() * kk, c))
                rel = torch.matmul(query, key_patches.t(), out=scratch.get('rel', nq, cand.numel()))
                rel.mul_(k_inv[None, cand])
                best_s, pos = torch.topk(rel, top_k, dim=1)
                scores[b, :, q_idx] = (best_s * q_inv[q_idx, None]).t()
                index[b, :, q_idx] = cand[pos].t()
    return scores, index


def _first_unique(values: torch.Tensor, size: int) -> torch.Tensor:
    """The distinct entries of ``values`` (integers in [0, size)) in the order of their first occurrence (work in
    the number of values, not in ``size``)."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long, device=values.device)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel(), device=values.device), reduce='amin')
    return uniq[torch.argsort(first)]


def _tie_equal(approx_scores: torch.Tensor, exact_scores: torch.Tensor, tol: float) -> torch.Tensor:
    return approx_scores >= exact_scores - tol


def recall_at_1(approx: Tuple[torch.Tensor, torch.Tensor], exact: Tuple[torch.Tensor, torch.Tensor],
                tol: float = 1e-4) -> float:
    """Fraction of LR patches whose approximate top-1 is the exact top-1, a patch within ``tol`` relevance of it
    counting as equal (ties)."""
    (a_s, a_i), (e_s, e_i) = approx, exact
    hit = (a_i[:, 0] == e_i[:, 0]) | _tie_equal(a_s[:, 0], e_s[:, 0], tol)
    return hit.float().mean().item()


def recall_at_k(approx: Tuple[torch.Tensor, torch.Tensor], exact: Tuple[torch.Tensor, torch.Tensor],
                tol: float = 1e-4) -> float:
    """Fraction of the exact top-k entries (over LR patches and ranks) found in the approximate top-k; the exact
    entry of rank r also counts as found when the approximate rank-r score is within ``tol`` of it (a tie)."""
    (a_s, a_i), (e_s, e_i) = approx, exact
    found = (e_i[:, :, None, :] == a_i[:, None, :, :]).any(dim=2)  # [N, k, L]
    found |= _tie_equal(a_s, e_s, tol)
    return found.float().mean().item()


@register_method
class ApproximateSearch(SearchMethod):
    """The approximate search as a search method: :func:`approximate_search` with ``spec.approximate``; its
    retrieval in blocks of ``spec.chunk_size`` queries, and, where it runs the exact search instead (small inputs),
    the chunked search with the spec's block sizes. :meth:`prepare` makes a reference's reduced index
    (:func:`prepare_reduced_index`), which every search of that reference then reads."""

    name = 'approximate'
    exact = False
    description = ('large inputs: reduced-descriptor retrieval, then exact relevances in candidate windows '
                   '(sub-quadratic)')

    def prepare(self, keys: torch.Tensor, spec) -> Optional[ReducedIndex]:
        """The reduced index of ``keys`` (None where every search of it runs the exact search)."""
        return prepare_reduced_index(keys, *spec.geometry, spec.approximate, query_chunk_size=spec.chunk_size)

    def prepare_key(self, spec) -> Hashable:
        """The index's settings (:func:`index_key`) and those that decide whether there is one."""
        cfg = spec.approximate
        return self.name, index_key(spec.geometry, cfg, spec.chunk_size), cfg.fallback, cfg.max_candidates

    def search(self, query: torch.Tensor, keys: torch.Tensor, spec, top_k: int, prepared=None):
        return approximate_search(query, keys, *spec.geometry, top_k, spec.approximate,
                                  query_chunk_size=spec.chunk_size,
                                  exact_chunks=(spec.chunk_size, spec.key_chunk_size), prepared=prepared)

    def search_bytes(self, query_hw, keys_hw, channels, spec, top_k) -> int:
        """With the reduced index :meth:`prepare` makes where it makes one (the engine prepares every reference;
        the index is :meth:`prepared_bytes`)."""
        own = approximate_search_bytes(query_hw, keys_hw, channels, *spec.geometry, spec.approximate,
                                       spec.chunk_size, prepared=self.prepared_bytes(keys_hw, channels, spec) > 0)
        return chunked_search_bytes(query_hw, keys_hw, channels, spec) if own is None else own

    def prepared_bytes(self, keys_hw: Tuple[int, int], channels: int, spec) -> int:
        """The reduced index (:func:`reduced_index_bytes`)."""
        return reduced_index_bytes(keys_hw, channels, *spec.geometry, spec.approximate)

    def is_exact_for(self, n_query: int, n_keys: int, spec) -> bool:
        return uses_exact(n_query, n_keys, spec.approximate)
