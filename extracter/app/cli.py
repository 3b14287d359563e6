"""``extracter-app`` / ``python -m extracter.app`` / ``make app``: the local web page.

    extracter-app                      # http://127.0.0.1:7860, models from pretrained/, outputs in results/app/
    extracter-app --port 8000 --device cuda --max-memory 8G
    extracter-app --listen-all         # every network interface: anyone who can reach this machine can use it

It listens on 127.0.0.1 (this machine only) unless ``--listen-all`` is given, which warns, and then also hides the
checkpoint path box (only the listed models can be used). Needs the ``app`` extra: ``pip install .[app]``.
"""

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Sequence

from extracter.data.image_arguments import add_image_arguments, apply_image_arguments
from extracter.utils.cli import run_main

DEFAULT_KEEP_JOBS = 20  # as extracter.app.jobs (not imported here: it imports torch)
DEFAULT_KEEP_MB = 500.0

DEFAULT_PORT = 7860
LAUNCH_ATTEMPTS = 4
HEARTBEAT_S = 2  # Gradio's default is 15 s: a closed tab's job would run on that long
PORT_TRIES = 20  # a port in use: the next ones are tried
REPO_PRETRAINED = Path(__file__).resolve().parents[2] / 'pretrained'
LISTEN_ALL_WARNING = ('WARNING: --listen-all: the page listens on every network interface; anyone who can reach this '
                      'machine can use it (and its CPU/GPU time). Only the models in the list can be chosen.')


def default_models_dir() -> Path:
    """The repository's pretrained/ (a source checkout), else ./pretrained."""
    return REPO_PRETRAINED if REPO_PRETRAINED.is_dir() else Path.cwd() / 'pretrained'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (a loopback address unless '
                                                            '--listen-all)')
    parser.add_argument('--port', type=int, default=DEFAULT_PORT,
                        help=f'port (default {DEFAULT_PORT}; if it is in use, the next free one)')
    parser.add_argument('--listen-all', action='store_true',
                        help='listen on all network interfaces (0.0.0.0, or --host); prints a warning')
    parser.add_argument('--models', default=None,
                        help='folder of checkpoints with their .yml, or alone (their network read off the weights) '
                        '(default: pretrained/)')
    parser.add_argument('-o', '--output', default='results/app', help='the page\'s own folder: uploads and results')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--max-memory', default=None,
                        help='default memory budget of a job, e.g. 6G (default: half of the memory free at start)')
    parser.add_argument('--max-upload', default='200M', help='largest uploaded file (default 200M)')
    parser.add_argument('--max-waiting', type=int, default=4, help='jobs that may wait behind the running one')
    parser.add_argument('--keep-jobs', type=int, default=DEFAULT_KEEP_JOBS,
                        help=f'keep the results of the last N jobs (default {DEFAULT_KEEP_JOBS}); older ones, and '
                        'older uploads, are removed')
    parser.add_argument('--keep-mb', type=float, default=DEFAULT_KEEP_MB,
                        help=f'and at most this many megabytes of results (default {DEFAULT_KEEP_MB:g}); the '
                        'latest job is always kept')
    add_image_arguments(parser)  # --max-image-pixels, --16bit-scaling: as the other command lines
    return parser


def check_host(host: str, listen_all: bool) -> str:
    """The address to listen on: ``host`` when it is a loopback address, or anything with ``listen_all``."""
    if listen_all:
        return '0.0.0.0' if host == '127.0.0.1' else host
    try:
        loopback = host == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f'error: --host {host} is not a loopback address; to listen on other interfaces pass '
                         '--listen-all as well (the page has no login)')
    return host


def free_port(host: str, port: int, tries: int = PORT_TRIES) -> int:
    """``port``, or the first of the next ``tries - 1`` that nothing listens on at ``host``."""
    if not 1 <= port <= 65535:
        raise ValueError(f'--port must be between 1 and 65535, got {port}')
    for candidate in range(port, min(65536, port + tries)):
        with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return candidate
    raise ValueError(f'--port: {port} to {min(65535, port + tries - 1)} are all in use on {host}; pass another --port')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``extracter-app``: the exit status (2 and one ``error:`` line for bad input, as every command line here)."""
    return run_main(serve, argv)


def serve(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    host = check_host(args.host, args.listen_all)
    if args.listen_all:
        print(LISTEN_ALL_WARNING, file=sys.stderr)
    from extracter.inference.memory_plan import parse_memory

    try:
        max_upload = parse_memory(args.max_upload)
    except ValueError:
        raise SystemExit(f'error: --max-upload must look like 200M or 1G, got {args.max_upload!r}') from None
    if args.device.startswith('cuda'):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f'error: --device {args.device}: CUDA is not available here')
    if args.keep_jobs < 1 or not args.keep_mb > 0:
        raise SystemExit(f'error: --keep-jobs must be at least 1 and --keep-mb above 0, got {args.keep_jobs} and '
                         f'{args.keep_mb:g}')
    if args.max_waiting < 0:
        raise SystemExit(f'error: --max-waiting must be 0 or more (0: no job waits), got {args.max_waiting}')
    output = Path(args.output).resolve()
    os.environ['GRADIO_TEMP_DIR'] = str(output / 'uploads')  # before Gradio is imported: uploads stay in our folder
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    # a closed tab is noticed by its missing heartbeat: within this many seconds its job is cancelled
    os.environ.setdefault('GRADIO_HEARTBEAT_INTERVAL', str(HEARTBEAT_S))
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('error: the web page needs the app extra: pip install ".[app]" (or make app)') from None
    from extracter.app.jobs import JobRunner, find_models
    from extracter.app.page import build_page

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    apply_image_arguments(args)
    models_dir = Path(args.models) if args.models else default_models_dir()
    models = find_models(models_dir)
    try:
        runner = JobRunner(output, device=args.device, max_memory=args.max_memory, models=models,
                           allow_model_paths=not args.listen_all, max_waiting=args.max_waiting,
                           keep_jobs=args.keep_jobs, keep_mb=args.keep_mb)
    except ValueError as err:
        raise SystemExit(f'error: --max-memory: {str(err).removeprefix("max_memory ")}') from None
    print(f'models in {models_dir}: {len(models)}; default memory budget {runner.max_memory}; outputs in {output} '
          f'(the last {args.keep_jobs} jobs, at most {args.keep_mb:g} MB)')
    page = build_page(runner, str(models_dir))
    page.queue(default_concurrency_limit=1)
    port = free_port(host, args.port)
    if port != args.port:
        print(f'port {args.port} is in use; using {port}')
    # quiet: Gradio's own banner suggests share=True, which this local page never uses; the address is printed below
    launch_kwargs = dict(server_name=host, server_port=port, share=False, max_file_size=max_upload,
                         allowed_paths=[str(runner.jobs_dir), str(runner.examples_dir)], ssr_mode=False,
                         show_error=False, run_history=False, quiet=True, prevent_thread_lock=True)
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        try:
            page.launch(**launch_kwargs)
            shown = f'[{host}]' if ':' in host else host
            print(f'the page is at http://{shown}:{port}/ ' + ('(every network interface; no login)' if
                  args.listen_all else '(this machine only)') + '; Ctrl-C stops it', flush=True)
            page.block_thread()
            return
        except ValueError as err:
            # Gradio checks that the started server answers within 3 s, else refuses to go on without share=True
            # (which we never set): on a busy machine, close it and try again.
            if 'localhost is not accessible' not in str(err) or attempt == LAUNCH_ATTEMPTS:
                raise SystemExit(f'error: the page could not start: {err}') from None
            print(f'the page did not answer its start-up check in time (a busy machine?); retrying '
                  f'({attempt}/{LAUNCH_ATTEMPTS - 1})', file=sys.stderr)
            page.close(verbose=False)


if __name__ == '__main__':
    sys.exit(main())
