"""Several references for one image (our extension; neither paper does this).

Every reference is encoded on its own (no VGG receptive field crosses from one reference into another), each is
searched with the network's own search, and the top-k is taken over the union of all references' patches: for every
LR patch the k most relevant patches among all references (the top-k of a union is the top-k of the per-reference
top-k lists, so this is exact). Transfer then gathers every position's patch from the reference it came from, and
folds and normalises as the network does. With one reference this is exactly the network's own forward pass.

Memory: like the dense path, per level the unfolded patches of one reference at a time plus one gathered
[N, C*k*k, L] tensor per rank; use tiles (a few references of moderate size) for large images.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from extracter.archs.refsr_base import SCALE, ReferenceFeatures, RefSRNet, make_lr_up
from extracter.utils.inference import pad_to_multiple


def union_search(net: RefSRNet, lr_feat: torch.Tensor, refs: Sequence[ReferenceFeatures]):
    """Top-k over the union of the references' patches: (scores, ref_id, index), each [N, top_k, L]."""
    st = net.search_transfer
    per_ref = [st.search(lr_feat, feats.search, feats.key_blocks) for feats in refs]
    scores = torch.cat([s for s, _ in per_ref], dim=1)
    index = torch.cat([i for _, i in per_ref], dim=1)
    ref_id = torch.cat([torch.full_like(i, r) for r, (_, i) in enumerate(per_ref)], dim=1)
    top, pos = torch.topk(scores, st.top_k, dim=1, largest=True, sorted=True)
    return top, torch.gather(ref_id, 1, pos), torch.gather(index, 1, pos)


def union_transfer(net: RefSRNet, scores: torch.Tensor, ref_id: torch.Tensor, index: torch.Tensor,
                   lr_hw: Tuple[int, int], refs: Sequence[ReferenceFeatures]):
    """Soft attention and textures (lists over ranks), each position's patch taken from its own reference."""
    st = net.search_transfer
    n = scores.size(0)
    h, w = lr_hw
    gh, gw = st.grid_size(h, w)
    sizes = {3: (h, w), 2: (2 * h, 2 * w), 1: (4 * h, 4 * w)}
    S: List[torch.Tensor] = []
    T = {3: [], 2: [], 1: []}
    for rank in range(st.top_k):
        S.append(scores[:, rank].reshape(n, 1, gh, gw))
        for level in (3, 2, 1):
            k, s, p = st.level_geometry(level)
            cols: Optional[torch.Tensor] = None
            for r, feats in enumerate(refs):
                value = {3: feats.lv3, 2: feats.lv2, 1: feats.lv1}[level]
                unfolded = F.unfold(value, kernel_size=k, padding=p, stride=s)  # [N, C*k*k, Lr]
                mine = ref_id[:, rank] == r  # [N, L]
                idx = torch.where(mine, index[:, rank], torch.zeros_like(index[:, rank]))
                gathered = torch.gather(unfolded, 2, idx.unsqueeze(1).expand(-1, unfolded.size(1), -1))
                cols = gathered if cols is None else torch.where(mine.unsqueeze(1), gathered, cols)
                del unfolded, gathered
            folded = F.fold(cols, output_size=sizes[level], kernel_size=k, padding=p, stride=s)
            T[level].append(folded / st.divisor(level, sizes[level], folded))
    return S, T[3], T[2], T[1]


def run_refsr_multi(net: RefSRNet, lr: torch.Tensor, refs: Sequence[torch.Tensor],
                    lr_up: Optional[torch.Tensor] = None,
                    refs_downup: Optional[Sequence[Optional[torch.Tensor]]] = None,
                    return_aux: bool = False):
    """Super-resolve ``lr`` [N,3,h,w] with several references (each [N,3,Hi,Wi], any sizes) in [0, 1]."""
    if not refs:
        raise ValueError('run_refsr_multi needs at least one reference')
    refs_downup = list(refs_downup) if refs_downup is not None else [None] * len(refs)
    if len(refs_downup) != len(refs):
        raise ValueError(f'{len(refs)} references but {len(refs_downup)} down-up-sampled references')
    h, w = lr.shape[-2:]
    lr_mult, ref_mult = net.required_multiples()
    with torch.no_grad():
        lr_p, _ = pad_to_multiple(lr, lr_mult)
        lr_up = make_lr_up(lr_p) if lr_up is None else pad_to_multiple(lr_up, SCALE * lr_mult)[0]
        encoded = []
        for ref, ref_du in zip(refs, refs_downup):
            ref_p, _ = pad_to_multiple(ref, ref_mult)
            ref_du = None if ref_du is None else pad_to_multiple(ref_du, ref_mult)[0]
            net.check_inputs(lr_p, ref_p, None, ref_du)
            encoded.append(net.encode_reference(ref_p, ref_du))
        lr_feat = net.search_features(lr_up)
        scores, ref_id, index = union_search(net, lr_feat, encoded)
        S, T3, T2, T1 = union_transfer(net, scores, ref_id, index, tuple(lr_p.shape[-2:]), encoded)
        sr = (net._reconstruct(lr_p * 2 - 1, S, T3, T2, T1) + 1) / 2
        sr = sr[:, :, :SCALE * h, :SCALE * w]
    if return_aux:
        return {'sr': sr, 'S': S, 'ref_id': ref_id, 'index': index}
    return sr
