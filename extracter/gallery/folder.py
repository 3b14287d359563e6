"""References for a folder of LR images from a gallery: what ``infer.py --gallery``, ``test.py``/validation
(``gallery:`` in a dataset block) and the web page share.

:func:`choose_references` brings the gallery's index up to date (:func:`~extracter.gallery.index.update_index`),
chooses every LR image's references (:func:`~extracter.gallery.select.select_references`; under torchrun each
process chooses for its share of the LR images, as it super-resolves its share, and the choices are gathered) and
returns the ``refs`` mapping {LR file name: [reference paths]} that
:class:`~extracter.data.inference_dataset.RefSRInferenceDataset` takes, with the rows of ``references.csv``.
"""

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from extracter.archs.refsr_base import RefSRNet
from extracter.data.image_io import ImageReadError, list_images, read_image
from extracter.gallery.index import GalleryIndex, IndexStats, gathered, index_files, update_index
from extracter.gallery.select import (
    DEFAULT_REFS_PER_IMAGE,
    DEFAULT_SHORTLIST,
    FAISS_ABOVE,
    ChosenReference,
    FaissShortlist,
    Selection,
    faiss_available,
    select_references,
    selection_rows,
)
from extracter.utils.file_io import atomic_write_text

CSV_COLUMNS = ('lr', 'rank', 'reference', 'score', 'shortlist_score', 'rerank_score')
CSV_NAME = 'references.csv'


@dataclass
class GalleryChoice:
    """The references chosen for a folder: ``refs`` {LR file name: [paths]}, ``rows`` (references.csv), the index's
    update (``stats``), and ``notes`` (one line each: LR images without a usable reference, candidates left out)."""

    refs: Dict[str, List[str]] = field(default_factory=dict)
    rows: List[Dict[str, object]] = field(default_factory=list)
    stats: IndexStats = field(default_factory=IndexStats)
    notes: List[str] = field(default_factory=list)


def choose_references(net: RefSRNet, lr_paths: Sequence[str], gallery: os.PathLike, k: int = DEFAULT_REFS_PER_IMAGE,
                      index_path: Optional[os.PathLike] = None, shortlist: int = DEFAULT_SHORTLIST,
                      device: str = 'cpu', rank: int = 0, world: int = 1, progress: bool = True) -> GalleryChoice:
    """References for each LR image of ``lr_paths`` from ``gallery`` (see the module docstring). An LR image that
    cannot be read gets no entry (the folder run reports it when it reads it); one for which no reference could be
    chosen is a note and no entry."""
    index, stats = update_index(net, gallery, index_path, device, rank, world, progress)
    out = GalleryChoice(stats=stats)
    # a large gallery: the faiss shortlist, built once for all the LR images
    faiss_index = FaissShortlist(index.descriptors) if len(index) > FAISS_ABOVE and faiss_available() else None
    mine = []
    for path in list(lr_paths)[rank::world]:
        try:
            selection = select_references(net, read_image(path), index, k, shortlist, device,
                                          faiss_index=faiss_index)
        except (ImageReadError, OSError) as err:
            mine.append((path, None, [str(err)]))
            continue
        mine.append((path, [(c.path, c.rank, c.score, c.shortlist_score, c.rerank_score) for c in selection.chosen],
                     selection.notes))
    results = {}
    for part in gathered(mine, world):
        for path, chosen, notes in part:
            results[path] = (chosen, notes)
    for path in lr_paths:
        chosen, notes = results[path]
        name = os.path.basename(path)
        out.notes += [f'{name}: {n}' for n in dict.fromkeys(notes)]
        if chosen is None:
            continue
        if not chosen:
            out.notes.append(f'{name}: no reference could be chosen from the gallery')
            continue
        selection = Selection([ChosenReference(*c) for c in chosen])
        out.refs[name] = selection.paths
        out.rows += selection_rows(name, selection)
    return out


class GalleryFrames:
    """A video's per-frame references from a gallery (``references_for(frame_number, frame_rgb_uint8) -> paths``,
    the callable :func:`extracter.inference.video.infer_video` takes): each frame's own choice
    (:func:`select_references`), its rows kept for references.csv (``lr``: ``frame_000001``, ...)."""

    def __init__(self, net: RefSRNet, index: GalleryIndex, k: int = DEFAULT_REFS_PER_IMAGE,
                 shortlist: int = DEFAULT_SHORTLIST, device: str = 'cpu') -> None:
        self.net, self.index, self.k, self.shortlist, self.device = net, index, k, shortlist, device
        self.rows: List[Dict[str, object]] = []
        self.notes: List[str] = []

    def __call__(self, number: int, frame) -> List[str]:
        selection = select_references(self.net, frame, self.index, self.k, self.shortlist, self.device)
        name = f'frame_{number:06d}'
        if not selection.chosen:
            raise ValueError(f'{name}: no reference could be chosen from the gallery')
        self.rows += selection_rows(name, selection)
        self.notes += [f'{name}: {n}' for n in selection.notes if n not in self.notes]
        return selection.paths


def references_csv_text(rows: Sequence[Dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_references_csv(path: os.PathLike, rows: Sequence[Dict[str, object]]) -> None:
    """``references.csv``: one row per chosen reference (:data:`CSV_COLUMNS`), written atomically."""
    atomic_write_text(path, references_csv_text(rows))


def references_for_files(net: RefSRNet, lr_rgb, gallery_files: Sequence[str], k: int = DEFAULT_REFS_PER_IMAGE,
                         shortlist: int = DEFAULT_SHORTLIST, device: str = 'cpu') -> Selection:
    """The web page's call: references for one decoded LR image among loose files (uploads), indexed in memory only
    (nothing written); files that cannot be used are notes."""
    index, skipped = index_files(net, gallery_files, device)
    if not len(index):
        raise ValueError('none of the gallery files can be used:\n  ' + '\n  '.join(skipped))
    selection = select_references(net, lr_rgb, index, k, shortlist, device)
    selection.notes = [f'{s} (skipped)' for s in skipped] + selection.notes
    return selection


def index_for_gallery(net: RefSRNet, gallery: os.PathLike, index_path: Optional[os.PathLike] = None,
                      device: str = 'cpu') -> GalleryIndex:
    """The up-to-date index of a gallery folder (the web page's folder choice; the video loop's keyframes)."""
    return update_index(net, gallery, index_path, device)[0]


def gallery_dataset_options(ds_opt: Mapping[str, Any], net: RefSRNet, device: str = 'cpu', rank: int = 0,
                            world: int = 1, progress: bool = True) -> Tuple[Dict[str, Any], Optional[GalleryChoice]]:
    """An inference dataset block with ``gallery: DIR`` (test.py) as the dataset takes it: its ``refs`` chosen from
    the gallery (``refs_per_image``, ``gallery_index``, ``shortlist``), with the choice (for references.csv). A block
    without a gallery comes back as it is, with None."""
    if not ds_opt.get('gallery'):
        return dict(ds_opt), None
    lr = os.fspath(ds_opt['dataroot_lq'])
    lr_paths = [lr] if os.path.isfile(lr) else [os.path.join(lr, n) for n in list_images(lr)]
    choice = choose_references(net, lr_paths, ds_opt['gallery'], ds_opt.get('refs_per_image') or DEFAULT_REFS_PER_IMAGE,
                               ds_opt.get('gallery_index'), ds_opt.get('shortlist') or DEFAULT_SHORTLIST, device, rank,
                               world, progress)
    missing = [os.path.basename(p) for p in lr_paths if os.path.basename(p) not in choice.refs]
    if missing:
        raise ValueError(f'gallery: no references for {", ".join(missing)}: ' + '; '.join(choice.notes))
    return {**ds_opt, 'refs': choice.refs}, choice
