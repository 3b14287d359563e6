"""Test EXTRACTER / TTSR on the test sets of an option file: SR images, a progress bar, and a metrics table.

    python extracter/test.py -opt options/test/cufed5.yml [--overwrite]

Writes ``results/<name>/visualization/<dataset>/<image>_<suffix>.png`` and, per dataset,
``results/<name>/metrics_<dataset>.csv`` and ``.md`` (one row per image, then the mean). The metrics are BasicSR's
``calculate_psnr``/``calculate_ssim`` on the saved uint8 images (Y channel, border crops as configured).
"""

import csv
import io
import os
import sys
from os import path as osp
from typing import Any, Dict, List, Optional

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import extracter  # noqa: E402,F401  (compat shim + registries, before basicsr)

# isort: split
from basicsr.data import build_dataloader, build_dataset  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import get_env_info, get_time_str, mkdir_and_rename  # noqa: E402
from basicsr.utils.options import dict2str  # noqa: E402

from extracter.train import run_cli, setup_run_logger  # noqa: E402
from extracter.utils import dist as dist_util  # noqa: E402
from extracter.utils.file_io import atomic_write_text  # noqa: E402
from extracter.utils.options import parse_options  # noqa: E402

ROOT_PATH = osp.dirname(osp.dirname(osp.abspath(__file__)))


def metrics_table(records: List[Dict[str, Any]], metric_names: List[str]) -> Dict[str, str]:
    """CSV and Markdown texts: one row per image and a final ``mean`` row."""
    means = {m: sum(r[m] for r in records) / len(records) for m in metric_names} if records else {}
    rows = [[r['name']] + [f'{r[m]:.4f}' for m in metric_names] for r in records]
    if records:
        rows.append(['mean'] + [f'{means[m]:.4f}' for m in metric_names])
    header = ['image'] + metric_names
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    md = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    md += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return {'csv': buf.getvalue(), 'md': '\n'.join(md) + '\n'}


def test_pipeline(root_path: str = ROOT_PATH, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opt, args = parse_options(root_path, is_train=False, argv=argv)
    opt.setdefault('val', {})
    opt['val'].setdefault('pbar', True)
    opt['val'].setdefault('save_img', True)
    results_root = opt['path']['results_root']
    if dist_util.is_main_process():
        if osp.exists(results_root) and os.listdir(results_root):
            if not opt['overwrite']:
                raise FileExistsError(f'{results_root} already exists; pass --overwrite to archive it (renamed to '
                                      '<name>_archived_<time>) and test again')
            mkdir_and_rename(results_root)
        os.makedirs(opt['path']['visualization'], exist_ok=True)
    dist_util.barrier()
    log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = setup_run_logger(log_file)
    logger.info(get_env_info())
    logger.info(dict2str({k: v for k, v in opt.items() if k != 'device'}))

    loaders = []
    for _, ds_opt in sorted(opt['datasets'].items()):
        test_set = build_dataset(ds_opt)
        loaders.append(build_dataloader(test_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                                        seed=opt['manual_seed']))
        logger.info(f'Test set {ds_opt["name"]}: {len(test_set)} images')
    model = build_model(opt)
    metric_names = list((opt['val'].get('metrics') or {}).keys())
    tables = {}
    for loader in loaders:
        name = loader.dataset.opt['name']
        logger.info(f'Testing {name}...')
        model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val']['save_img'])
        if dist_util.is_main_process():
            table = metrics_table(model.metric_records[name], metric_names)
            for ext, text in table.items():
                atomic_write_text(osp.join(results_root, f'metrics_{name}.{ext}'), text)
            logger.info(f'{name}: metrics table written to {osp.join(results_root, f"metrics_{name}.csv")} '
                        f'(and .md)\n{table["md"]}')
            tables[name] = model.metric_records[name]
    opt['tables'] = tables
    return opt


def main() -> None:
    run_cli(test_pipeline)


if __name__ == '__main__':
    main()
