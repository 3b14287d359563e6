"""Pack CUFED (train input/ref and the CUFED5 test set), or any image folder, into LMDBs in BasicSR's layout.

    python scripts/create_lmdb.py --cufed datasets/CUFED  # -> CUFED/train/{input,ref}.lmdb, CUFED/test/CUFED5.lmdb
    python scripts/create_lmdb.py --cufed datasets/CUFED --sets cufed5 --out datasets/CUFED_lmdb
    python scripts/create_lmdb.py --folder datasets/Urban100 --lmdb datasets/Urban100.lmdb

Every LMDB is written to a temporary folder, verified (count, and every record decoded and compared with the
pixels that were packed) and only then moved into place. Missing pairs and unreadable files are reported by name and
nothing is written. An existing LMDB is never touched unless --overwrite is given. Ctrl-C or SIGTERM removes the
temporary folders; those of a run killed outright are removed by the next run. Exit status: 0 on success, 2 on bad
input (one `error:` line on stderr; --debug adds the traceback), 1 on an unexpected error, 130 on Ctrl-C, 143 on
SIGTERM.
"""

import argparse
import sys

from extracter.data.image_arguments import add_image_arguments, apply_image_arguments
from extracter.data.lmdb_pack import PackError, PackJob, cufed_jobs, folder_files, pack
from extracter.utils.cli import ArgumentParser, run_main


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--cufed', help='CUFED root folder (with train/input, train/ref, test/CUFED5)')
    src.add_argument('--folder', help='any image folder (needs --lmdb)')
    p.add_argument('--lmdb', help='destination .lmdb folder for --folder')
    p.add_argument('--out', help='root for the CUFED LMDBs (default: the CUFED root itself)')
    p.add_argument('--sets', default='train,cufed5', help='CUFED parts to pack: train, cufed5 (comma separated)')
    p.add_argument('--compress-level', type=int, default=1, help='PNG compression level 0..9 (BasicSR uses 1)')
    p.add_argument('--overwrite', action='store_true', help='replace existing LMDBs')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    add_image_arguments(p)
    p.add_argument('--debug', action='store_true', help='show the traceback of an error')
    args = p.parse_args(argv)
    if args.folder and not args.lmdb:
        p.error('--folder needs --lmdb')
    if args.lmdb and not args.folder:
        p.error('--lmdb goes with --folder')
    if not 0 <= args.compress_level <= 9:
        p.error(f'--compress-level must be 0..9 (PNG), got {args.compress_level}')
    return args


def run(argv) -> int:
    args = parse_args(argv)
    apply_image_arguments(args)
    if args.cufed:
        sets = [s.strip().lower() for s in args.sets.split(',') if s.strip()]
        bad = sorted(set(sets) - {'train', 'cufed5'})
        if bad or not sets:
            raise ValueError(f'--sets takes train and/or cufed5, got {args.sets!r}')
        jobs = cufed_jobs(args.cufed, args.out, sets)
    else:
        jobs = [PackJob(args.lmdb, folder_files(args.folder))]
    pack(jobs, compress_level=args.compress_level, overwrite=args.overwrite, show_progress=not args.no_progress)
    return 0


def main(argv=None) -> int:
    return run_main(run, argv, known=(PackError,))


if __name__ == '__main__':
    sys.exit(main())
