"""Testing: SR images, a progress bar, and a metrics table per test set (BasicSR's ``results/<name>/`` layout).

Writes ``results/<name>/visualization/<dataset>/<image>_<suffix>.png``, per dataset
``results/<name>/metrics_<dataset>.csv`` and ``.md`` (one row per image, then the mean), and
``results/<name>/summary.csv`` and ``.md`` (one row per dataset: its means). The metrics are BasicSR's
``calculate_psnr``/``calculate_ssim`` on the saved uint8 images (Y or RGB, border crops as configured, see
:mod:`extracter.evaluation.protocols`). Every metrics file names its protocol: the dataset's reference protocol (e.g.
CUFED5's ``ref_level``) and what each metric measures.
"""

import csv
import io
import os
import sys
from os import path as osp
from typing import Any, Dict, List, Optional

from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_time_str
from basicsr.utils.options import dict2str

from extracter.evaluation.protocols import describe_metric
from extracter.gallery.folder import gallery_dataset_options, write_references_csv
from extracter.options.schema import option_errors, parse_options
from extracter.pipeline.common import ROOT_PATH, archive_folder, bind_console, setup_run_logger
from extracter.utils import dist as dist_util
from extracter.utils.file_io import atomic_write_text, clean_stale_temp_files
from extracter.utils.folder_lock import FolderLock, command_line


def prepare_results_dir(opt: Dict[str, Any], lock: Optional[FolderLock] = None) -> None:
    """``results/<name>``: one holding results (a metrics table: a finished test set) is archived with ``--overwrite``
    and refused without it; an empty one, one with only the log of a failed start, or the pictures of a run that
    stopped before its first metrics table (a corrupt image, an interruption) is reused: its pictures are made
    again. ``lock``: rank 0's lock on the folder (taken before it is looked at; it moves to the new folder when the
    old one is archived)."""
    results_root = opt['path']['results_root']
    if dist_util.is_main_process():
        vis = opt['path']['visualization']  # temporary files of a run killed outright (SIGKILL, out of memory)
        folders = [results_root] + ([osp.join(vis, d) for d in os.listdir(vis)] if osp.isdir(vis) else [])
        for folder in folders:
            clean_stale_temp_files(folder, log=lambda line: print(line, file=sys.stderr))
        if osp.exists(results_root) and holds_results(results_root):
            if not opt['overwrite']:
                raise FileExistsError(f'{results_root} already exists; pass --overwrite to archive it (renamed to '
                                      '<name>_archived_<time>) and test again (it holds results)')
            archive_folder(results_root, lock)
        os.makedirs(opt['path']['visualization'], exist_ok=True)
    dist_util.barrier()


def holds_results(root: str) -> bool:
    """Whether ``results/<name>`` holds a finished test set (its metrics table or the summary is written last)."""
    return any(n.startswith(('metrics_', 'summary.')) for n in os.listdir(root))


def _texts(header: List[str], rows: List[List[str]], preface: List[str]) -> Dict[str, str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    md = preface + ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    md += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return {'csv': buf.getvalue(), 'md': '\n'.join(md) + '\n'}


def _metric_lines(metrics: Optional[Dict[str, Any]], metric_names: List[str]) -> List[str]:
    if not metrics:
        return []
    return ['Metrics (on the saved uint8 images): '
            + '; '.join(describe_metric(m, metrics.get(m) or {}) for m in metric_names) + '.']


def metrics_table(records: List[Dict[str, Any]], metric_names: List[str], protocol: Optional[str] = None,
                  metrics: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """CSV and Markdown texts: one row per image and a final ``mean`` row. ``protocol`` (the dataset's reference
    protocol) is a column of the CSV and, with the metrics' definitions (``metrics``: the ``val.metrics`` blocks), a
    preface of the Markdown."""
    means = {m: sum(r[m] for r in records) / len(records) for m in metric_names} if records else {}
    extra = [protocol] if protocol is not None else []
    rows = [[r['name']] + [f'{r[m]:.4f}' for m in metric_names] + extra for r in records]
    if records:
        rows.append(['mean'] + [f'{means[m]:.4f}' for m in metric_names] + extra)
    header = ['image'] + metric_names + (['protocol'] if protocol is not None else [])
    preface = [f'Protocol: {protocol}.'] if protocol is not None else []
    preface += _metric_lines(metrics, metric_names)
    return _texts(header, rows, preface + [''] if preface else [])


def summary_table(tables: Dict[str, Dict[str, Any]], metric_names: List[str],
                  metrics: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """``summary.{csv,md}``: one row per test set (``tables``: name -> {'protocol', 'records'}) with the mean of each
    metric, in the order tested."""
    header = ['test set', 'reference protocol', 'images'] + metric_names
    rows = []
    for name, t in tables.items():
        recs = t['records']
        rows.append([name, t['protocol'], str(len(recs))]
                    + [f'{sum(r[m] for r in recs) / len(recs):.4f}' if recs else '' for m in metric_names])
    return _texts(header, rows, _metric_lines(metrics, metric_names) + [''] if metrics else [])


def dataset_protocol(dataset) -> str:
    """How a test set pairs images with references: the dataset's own ``protocol``, else its type and options."""
    protocol = getattr(dataset, 'protocol', None)
    if protocol:
        return protocol
    opt = getattr(dataset, 'opt', {}) or {}
    keys = [f'{k} {opt[k]}' for k in ('ref_mode', 'offsets') if opt.get(k) is not None]
    return ', '.join([str(opt.get('type', type(dataset).__name__))] + keys)


def test_pipeline(root_path: str = ROOT_PATH, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opt, args = parse_options(root_path, is_train=False, argv=argv)
    bind_console()
    opt.setdefault('val', {})
    opt['val'].setdefault('pbar', True)
    opt['val'].setdefault('save_img', True)
    results_root = opt['path']['results_root']
    # data and model first: a test that cannot start leaves no results folder behind
    loaders, info = [], []
    # a gallery's choice needs the network: then the model is built first
    model = build_model(opt) if any(ds.get('gallery') for ds in opt['datasets'].values()) else None
    choices = {}
    for phase, ds_opt in sorted(opt['datasets'].items()):
        with option_errors(opt['opt_path'], f'datasets.{phase}'):
            if ds_opt.get('gallery'):
                ds_opt, choices[ds_opt['name']] = gallery_dataset_options(
                    ds_opt, model.get_bare_model(model.net_g), str(model.device), opt.get('rank', 0),
                    opt.get('world_size', 1), progress=dist_util.is_main_process())
            test_set = build_dataset(ds_opt)
        loaders.append(build_dataloader(test_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                                        seed=opt['manual_seed']))
        info.append(f'Test set {ds_opt["name"]}: {len(test_set)} images')
    model = model or build_model(opt)
    lock = None
    if dist_util.is_main_process():  # one run at a time in results/<name>
        lock = FolderLock(results_root, command_line('test.py', sys.argv[1:] if argv is None else argv), args.wait)
        lock.acquire()
    try:
        prepare_results_dir(opt, lock)
        if dist_util.is_main_process():
            for name, choice in choices.items():  # results/<name>/references_<dataset>.csv
                write_references_csv(osp.join(results_root, f'references_{name}.csv'), choice.rows)
                info.append(f'Test set {name}: references chosen from its gallery (index {choice.stats.path}: '
                            f'{choice.stats.described} described, {choice.stats.reused} reused)')
                info += [f'  skipped: {line}' for line in choice.stats.skipped]
        run_tests(opt, loaders, info, model)
    finally:
        if lock is not None:
            lock.release()
    return opt


def run_tests(opt: Dict[str, Any], loaders: List[Any], info: List[str], model) -> None:
    """Test every set into ``results/<name>`` (prepared, and locked by rank 0); ``opt['tables']``: the records."""
    results_root = opt['path']['results_root']
    log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = setup_run_logger(log_file)
    logger.info(get_env_info())
    logger.info(dict2str({k: v for k, v in opt.items() if k != 'device'}))
    for line in info:
        logger.info(line)
    metrics = opt['val'].get('metrics') or {}
    metric_names = list(metrics)
    tables, summary = {}, {}
    for loader in loaders:
        name = loader.dataset.opt['name']
        protocol = dataset_protocol(loader.dataset)
        logger.info(f'Testing {name} ({protocol})...')
        model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val']['save_img'])
        if dist_util.is_main_process():
            table = metrics_table(model.metric_records[name], metric_names, protocol, metrics)
            for ext, text in table.items():
                atomic_write_text(osp.join(results_root, f'metrics_{name}.{ext}'), text)
            logger.info(f'{name}: metrics table written to {osp.join(results_root, f"metrics_{name}.csv")} '
                        f'(and .md)\n{table["md"]}')
            tables[name] = model.metric_records[name]
            summary[name] = {'protocol': protocol, 'records': model.metric_records[name]}
            if metric_names:  # rewritten after each test set: an interrupted run keeps the sets it finished
                for ext, text in summary_table(summary, metric_names, metrics).items():
                    atomic_write_text(osp.join(results_root, f'summary.{ext}'), text)
    if summary and metric_names and dist_util.is_main_process():
        logger.info(f'Summary written to {osp.join(results_root, "summary.md")} (and .csv)\n'
                    f'{summary_table(summary, metric_names, metrics)["md"]}')
    opt['tables'] = tables
