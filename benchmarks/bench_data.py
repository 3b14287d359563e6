"""Measure data loading throughput (samples per second, best of two epochs) of RefSRTrainDataset from folders
and from LMDB, and print a table. Builds a temporary CUFED-layout set of 160x160 HR / varied-size Ref pairs from
real photographs (default ../shared/data/train/bsd200), packs it with the LMDB packer, and removes it afterwards.

    python -m benchmarks.bench_data --num 200 --workers 0 2
"""

import os
import random
import sys
import tempfile
import time

from benchmarks.harness import SHARED_DATA, check_at_least, markdown_table
from extracter.utils.cli import ArgumentParser, run_main


def build_fixture(src: str, root: str, num: int) -> None:
    from PIL import Image

    from extracter.data.image_io import list_images, read_image

    names = list_images(src)
    if len(names) < num:
        raise ValueError(f'{src} has {len(names)} images, fewer than --num {num}')
    rng = random.Random(0)
    for sub in ('input', 'ref'):
        os.makedirs(os.path.join(root, 'train', sub))
    for i, name in enumerate(names[:num]):
        img = read_image(os.path.join(src, name))
        rh, rw = rng.choice([(160, 160), (160, 120), (120, 160), (144, 150)])
        Image.fromarray(img[:160, :160]).save(os.path.join(root, 'train', 'input', f'{i:06d}.png'))
        Image.fromarray(img[-rh:, -rw:]).save(os.path.join(root, 'train', 'ref', f'{i:06d}.png'))


def throughput(ds, workers: int, batch: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True, drop_last=True)
    n, start = 0, time.perf_counter()
    for b in loader:
        n += b['gt'].shape[0]
    return n / (time.perf_counter() - start)


def run(argv) -> int:
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--src', default=str(SHARED_DATA / 'train' / 'bsd200'))
    p.add_argument('--num', type=int, default=200)
    p.add_argument('--batch', type=int, default=9)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    args = p.parse_args(argv)
    check_at_least(p, ('--num', args.num, 1), ('--batch', args.batch, 1), ('--workers', args.workers, 0))
    from extracter.data.lmdb_pack import cufed_jobs, pack
    from extracter.data.refsr_train_dataset import RefSRTrainDataset

    with tempfile.TemporaryDirectory() as root:
        build_fixture(args.src, root, args.num)
        pack(cufed_jobs(root, None, ['train']), show_progress=False, log=lambda m: None)
        rows = []
        for backend, suffix in (('disk', ''), ('lmdb', '.lmdb')):
            ds = RefSRTrainDataset(dataroot_gt=os.path.join(root, 'train', 'input' + suffix),
                                   dataroot_ref=os.path.join(root, 'train', 'ref' + suffix),
                                   io_backend={'type': backend}, gt_size=160, swap_prob=0.5, pad_multiple=16)
            for w in args.workers:
                # best of two epochs: the machine may be shared, the first epoch pays for warm-up
                rows.append((backend, w, max(throughput(ds, w, args.batch) for _ in range(2))))
    print(f'RefSRTrainDataset, {args.num} pairs (160x160 HR), batch {args.batch}, {os.cpu_count()} CPUs')
    print(markdown_table(['backend', 'workers', 'samples/s'], [[b, str(w), f'{sps:.0f}'] for b, w, sps in rows]))
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
