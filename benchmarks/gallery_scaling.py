"""How the gallery scales (issue 26, item 6 (2) and (3)): index time, query time at 100 / 1,000 / 10,000 images,
and the faiss shortlist at 1,000,000.

1. Index time per image: ``--describe`` real 1-megapixel images (1024 x 1024 crops of the DCSR CameraFusion pair
   and their flips, written as PNG files) indexed by :func:`extracter.gallery.index.update_index` (reading and
   describing; 2 threads by default). Target: <= 0.25 s per image.
2. Query time (shortlist + re-rank, :func:`extracter.gallery.select.select_references`) at each ``--sizes``:
   galleries larger than the real set are synthesised at the descriptor level: every extra row is a real
   descriptor (of a real crop or flip of BSD200 / Yang91 / DCSR images) plus Gaussian noise (``--noise``),
   re-normalised, and points to the real file it came from (so the re-rank reads and searches real images). This is
   stated in the table. Target: <= 2 s at 10,000.
3. The faiss shortlist (:class:`extracter.gallery.select.FaissShortlist`, IVF lists over float16 vectors) on
   ``--faiss-size`` random unit descriptors of the real size (512): bytes per image, build time, shortlist time,
   recall@M against the exact cosine top-M (low on random vectors: beyond the true neighbour the top-M are noise),
   whether the query's true neighbour is in the shortlist (``found``), and the exact product's time beside it.

Writes ``summary.md`` and ``scaling.csv`` into ``--output``.

  python -m benchmarks.gallery_scaling --quick     # 8 images described, sizes 100 / 1,000, faiss at 20,000: ~2 min
  python -m benchmarks.gallery_scaling             # 40 described, 100 / 1,000 / 10,000, faiss at 1,000,000: ~15 min
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.gallery.descriptor import DESCRIPTOR_DIM
from extracter.gallery.index import GalleryIndex, update_index
from extracter.gallery.select import (
    DEFAULT_SHORTLIST,
    FaissShortlist,
    faiss_available,
    select_references,
    shortlist_exact,
)
from extracter.inference.network import load_network
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', default=str(harness.DEMO_WEIGHTS))
    p.add_argument('--describe', type=int, default=40, help='real 1-megapixel images indexed for the index time')
    p.add_argument('--sizes', type=int, nargs='+', default=[100, 1000, 10000])
    p.add_argument('--queries', type=int, default=5)
    p.add_argument('--shortlist', type=int, default=DEFAULT_SHORTLIST)
    p.add_argument('--noise', type=float, default=0.05, help='std of the noise of the synthesised descriptors')
    p.add_argument('--faiss-size', type=int, default=1_000_000)
    p.add_argument('--faiss-queries', type=int, default=100)
    p.add_argument('--nprobe', type=int, default=16, help='faiss: inverted lists searched per query')
    p.add_argument('--quick', action='store_true', help='8 described, sizes 100 and 1,000, faiss at 20,000')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('-o', '--output', default='results/gallery_scaling')
    p.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(p, 'unstated')
    return p


def megapixel_crops(count: int, folder: Path) -> List[Path]:
    """``count`` 1024 x 1024 crops of the DCSR pair and their flips, as PNG files."""
    folder.mkdir(parents=True)
    out = []
    for name in ('wide.jpg', 'tele.jpg'):
        img = Image.open(harness.DCSR_PAIR / name).convert('RGB')
        for y in range(0, img.height - 1023, 512):
            for x in range(0, img.width - 1023, 512):
                crop = img.crop((x, y, x + 1024, y + 1024))
                for flip in (False, True):
                    if len(out) == count:
                        return out
                    path = folder / f'{name[:-4]}_{x}_{y}_{int(flip)}.png'
                    (crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop).save(path)
                    out.append(path)
    return out


def real_set(folder: Path) -> List[Path]:
    """Real small images and their flips (BSD200, Yang91): the files the synthesised rows point to."""
    folder.mkdir(parents=True)
    out = []
    for pool in ('bsd200', 'yang91'):
        for src in sorted((harness.SHARED_DATA / 'train' / pool).iterdir())[:50]:
            img = Image.open(src).convert('RGB')
            for flip in (False, True):
                path = folder / f'{pool}_{src.stem}_{int(flip)}.png'
                (img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img).save(path)
                out.append(path)
    return out


def synthesised(base: GalleryIndex, size: int, noise: float, rng: np.random.Generator) -> GalleryIndex:
    """``size`` rows: the real ones, then real ones plus noise (re-normalised), each naming its real file."""
    src = np.arange(size) % len(base)
    desc = base.descriptors[src].astype(np.float32)
    extra = np.arange(size) >= len(base)
    desc[extra] += rng.normal(0, noise, desc[extra].shape).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return GalleryIndex(base.root, base.model, [base.names[i] for i in src], base.stats[src], base.hw[src],
                        desc.astype(np.float16))


def query_times(net, base: GalleryIndex, sizes: List[int], args) -> List[Dict[str, object]]:
    rng = np.random.default_rng(0)
    lrs = [deg.make_lq(read_image(p)) for p in base.paths[:args.queries]]
    select_references(net, lrs[0], base, 2, args.shortlist)  # warm-up
    rows = []
    for size in sizes:
        index = synthesised(base, size, args.noise, rng)
        times = []
        for lr in lrs:
            start = time.perf_counter()
            select_references(net, lr, index, 2, args.shortlist)
            times.append(time.perf_counter() - start)
        rows.append({'part': 'query', 'size': size, 'seconds': statistics.fmean(times),
                     'note': f'{len(base)} real descriptors, the rest synthesised (noise {args.noise})'
                     if size > len(base) else 'real descriptors'})
    return rows


def faiss_row(size: int, n_queries: int, m: int, nprobe: int) -> Dict[str, object]:
    import faiss

    rng = np.random.default_rng(1)
    x = rng.standard_normal((size, DESCRIPTOR_DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = rng.choice(size, n_queries, replace=False)
    q = x[picks] + rng.normal(0, 0.5 / np.sqrt(DESCRIPTOR_DIM), (n_queries, DESCRIPTOR_DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x16 = x.astype(np.float16)
    start = time.perf_counter()
    index = FaissShortlist(x, nprobe=nprobe)
    build = time.perf_counter() - start
    del x
    bytes_per = len(faiss.serialize_index(index.index)) / size
    t_faiss, t_exact, recall, found = [], [], [], []
    for query, source in zip(q, picks):
        start = time.perf_counter()
        _, got = index.search(query, m)
        t_faiss.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, exact = shortlist_exact(x16, query, m)
        t_exact.append(time.perf_counter() - start)
        recall.append(len(set(got.tolist()) & set(exact.tolist())) / m)
        found.append(float(source in got.tolist()))
    note = (f'random unit descriptors ({DESCRIPTOR_DIM} dims), nlist {index.index.nlist}, nprobe '
            f'{index.index.nprobe}, float16 vectors; queries: a row plus noise (cosine ~0.9), found = that row in '
            'the shortlist')
    return {'part': 'faiss', 'size': size, 'build_s': build, 'bytes_per_image': bytes_per,
            'seconds': statistics.fmean(t_faiss), 'exact_s': statistics.fmean(t_exact),
            'recall': statistics.fmean(recall), 'found': statistics.fmean(found), 'note': note}


def run(args: argparse.Namespace) -> str:
    if args.quick:
        args.describe, args.sizes, args.faiss_size, args.faiss_queries = 8, [100, 1000], 20_000, 20
    out = Path(args.output)
    harness.refuse_existing(out, args.overwrite)
    torch.set_num_threads(args.threads)
    net = load_network(args.weights, None, 'cpu', None)
    work = Path(tempfile.mkdtemp(prefix='gallery_scaling_'))
    rows: List[Dict[str, object]] = []
    try:
        big = megapixel_crops(args.describe, work / 'mp')
        _, stats = update_index(net, work / 'mp', work / 'mp.npz')
        rows.append({'part': 'index', 'size': len(big), 'seconds': stats.seconds / max(1, stats.described),
                     'note': '1024 x 1024 PNG crops and flips of the DCSR pair: read + describe, per image'})
        real = real_set(work / 'real')
        base, _ = update_index(net, work / 'real', work / 'real.npz')
        rows += query_times(net, base, args.sizes, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if faiss_available():
        rows.append(faiss_row(args.faiss_size, args.faiss_queries, args.shortlist, args.nprobe))
    else:
        rows.append({'part': 'faiss', 'size': args.faiss_size, 'note': 'faiss-cpu is not installed: skipped'})
    body = []
    for r in rows:
        cells = [format(r[key], spec) if key in r else '' for key, spec in (
            ('seconds', '.4f'), ('build_s', '.1f'), ('bytes_per_image', '.0f'), ('recall', '.3f'), ('found', '.3f'),
            ('exact_s', '.4f'))]
        body.append([r['part'], f'{r["size"]:,}', *cells, str(r['note'])])
    table = '\n'.join([
        '### Gallery scaling', '', f'Machine: {args.machine}; {args.threads} threads; M = {args.shortlist}; '
        f'{len(real)} real small images. Command: `{harness.command_line()}`', '',
        harness.markdown_table(['part', 'images', 's per image / query', 'build (s)', 'bytes per image',
                                f'recall@{args.shortlist}', 'found', 'exact top-M (s)', 'how'], body, 'lrrrrrrrl'), ''])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'summary.md', table)
    atomic_write_text(out / 'scaling.csv', harness.csv_text(rows, ['part', 'size', 'seconds', 'build_s',
                                                                  'bytes_per_image', 'recall', 'found', 'exact_s',
                                                                  'note']))
    print(table)
    return table


def main(argv=None) -> int:
    def cli(argv_):
        parser = build_parser()
        args = parser.parse_args(argv_)
        harness.check_at_least(parser, ('--describe', args.describe, 1), ('--queries', args.queries, 1),
                               ('--shortlist', args.shortlist, 1), ('--faiss-size', args.faiss_size, 1))
        run(args)
        return 0

    return run_main(cli, argv)


if __name__ == '__main__':
    sys.exit(main())
