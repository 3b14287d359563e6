"""Super-resolve your own photos (x4) with the help of high-resolution reference pictures.

    python extracter/infer.py --weights W.pth --lr LR.png --ref REF.png [--ref REF2.png ...] -o OUT_DIR
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref-dir REF_DIR -o OUT_DIR   # matched by file name
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref REF.png -o OUT_DIR       # one reference for all

The network options come from the YAML beside the weights (``W.yml``, as ``scripts/convert_official.py`` and the
demo model have them; key ``network_g``) or from ``--opt`` (any YAML with a ``network_g`` block, e.g. a training
options file). For every input ``x`` it writes ``x_sr.png``, ``x_bicubic.png`` and ``x_compare.png`` (bicubic | SR
| reference), and with ``--texture-map`` ``x_texture.png`` (where the textures came from). Existing outputs are never
replaced unless ``--overwrite``. Several ``--ref`` (or a sub-folder ``REF_DIR/x/``) search the union of all the
references' patches (our extension).
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from extracter.archs.refsr_base import SCALE  # noqa: E402
from extracter.data.image_io import ImageReadError  # noqa: E402
from extracter.data.inference_dataset import RefSRInferenceDataset  # noqa: E402
from extracter.registry import ARCH_REGISTRY  # noqa: E402
from extracter.utils.inference import pad_to_multiple, run_refsr  # noqa: E402
from extracter.utils.memory_plan import MemoryBudgetError  # noqa: E402
from extracter.utils.multi_ref import run_refsr_multi, union_search  # noqa: E402
from extracter.utils.visualize import save_png, side_by_side, tensor_to_uint8, texture_source_panels  # noqa: E402

OUTPUT_SUFFIXES = ('sr', 'bicubic', 'compare')


class InferenceError(ValueError):
    pass


def network_options(weights: str, opt_path: Optional[str] = None) -> Dict[str, Any]:
    """``network_g`` from ``--opt`` or the YAML beside the weights."""
    path = Path(opt_path) if opt_path else Path(weights).with_suffix('.yml')
    if not path.is_file():
        raise FileNotFoundError(f'network options not found: {path} (give --opt with a network_g block)')
    with open(path, encoding='utf-8') as f:
        opt = yaml.safe_load(f) or {}
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise InferenceError(f'{path}: no network_g block')
    return dict(opt['network_g'])


def load_network(weights: str, opt_path: Optional[str] = None, device: str = 'cpu',
                 param_key: Optional[str] = None) -> torch.nn.Module:
    """Build the network from its options and load the weights strictly (untrusted file: weights_only)."""
    opt = network_options(weights, opt_path)
    arch = opt.pop('type', None)
    if arch not in ('Extracter', 'TTSR'):
        raise InferenceError(f'network_g.type must be Extracter or TTSR, got {arch!r}')
    opt['dfe_init' if arch == 'Extracter' else 'lte_init'] = 'random'  # the weights file holds the extractor
    opt.pop('vgg19_path', None)
    net = ARCH_REGISTRY.get(arch)(**opt)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f'weights not found: {weights}')
    try:
        ckpt = torch.load(weights, map_location='cpu', weights_only=True)
    except Exception as err:  # any unpickling failure means the same to the user
        raise InferenceError(f'{weights}: not a weights-only torch checkpoint: {err}') from err
    keys = [param_key] if param_key else ['params_ema', 'params']
    state = next((ckpt[k] for k in keys if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict)), ckpt)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InferenceError(f'{weights} does not match the {arch} options: {err}') from err
    return net.eval().to(device)


def output_paths(out_dir: Path, stem: str, texture_map: bool) -> Dict[str, Path]:
    names = list(OUTPUT_SUFFIXES) + (['texture'] if texture_map else [])
    return {name: out_dir / f'{stem}_{name}.png' for name in names}


def super_resolve(net, sample: Dict[str, Any], device: str, run_kwargs: Dict[str, Any],
                  texture_map: bool = False, progress=None) -> Dict[str, Any]:
    """SR of one dataset sample (batch of 1); returns uint8 images and optional texture-source panels."""
    lq, lq_up = sample['lq'].to(device), sample['lq_up'].to(device)
    h, w = (int(v) for v in sample['lq_size'].reshape(-1)[:2])
    refs = sample['ref'] if isinstance(sample['ref'], list) else [sample['ref']]
    refs_du = sample['ref_downup'] if isinstance(sample['ref_downup'], list) else [sample['ref_downup']]
    refs = [r.to(device) for r in refs]
    refs_du = [r.to(device) for r in refs_du]
    if len(refs) == 1:
        sr = run_refsr(net, lq, refs[0], lr_up=lq_up, ref_downup=refs_du[0], progress=progress, **run_kwargs)
    else:
        if run_kwargs.get('tile') or run_kwargs.get('max_memory'):
            raise InferenceError('--tile/--max-memory work with one reference per image; several references are '
                                 'searched untiled')
        sr = run_refsr_multi(net, lq, refs, lr_up=lq_up, refs_downup=refs_du)
    sr = sr[..., :SCALE * h, :SCALE * w]
    bicubic = lq_up[..., :SCALE * h, :SCALE * w]
    out = {'sr': tensor_to_uint8(sr), 'bicubic': tensor_to_uint8(bicubic),
           'refs': [tensor_to_uint8(r) for r in refs]}
    if texture_map:
        out['texture_panels'] = texture_panels(net, lq, lq_up, refs, refs_du, (SCALE * h, SCALE * w))
    return out


def texture_panels(net, lq, lq_up, refs, refs_du, out_hw):
    """Search once more on the (padded) inputs to show which reference patch each output region copied."""
    lr_mult, ref_mult = net.required_multiples()
    with torch.no_grad():
        lq_p = pad_to_multiple(lq, lr_mult)[0]
        lq_up_p = pad_to_multiple(lq_up, SCALE * lr_mult)[0]
        encoded = [net.encode_reference(pad_to_multiple(r, ref_mult)[0], pad_to_multiple(d, ref_mult)[0])
                   for r, d in zip(refs, refs_du)]
        scores, ref_id, index = union_search(net, net.search_features(lq_up_p), encoded)
    st = net.search_transfer
    lr_grid = st.grid_size(*lq_p.shape[-2:])
    ref_grids = [st.grid_size(*e.search.shape[-2:]) for e in encoded]
    padded_refs = [tensor_to_uint8(pad_to_multiple(r, ref_mult)[0]) for r in refs]
    panels = texture_source_panels(scores[0, 0], ref_id[0, 0], index[0, 0], lr_grid, ref_grids, padded_refs,
                                   (SCALE * lq_p.shape[-2], SCALE * lq_p.shape[-1]))
    crop = [(label, p[:out_hw[0], :out_hw[1]]) if i < 2 else (label, p) for i, (label, p) in enumerate(panels)]
    return crop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, help='BasicSR checkpoint ({"params": ...}) or a state dict')
    parser.add_argument('--opt', default=None, help='YAML with network_g (default: the weights path with .yml)')
    parser.add_argument('--lr', required=True, help='an LR image or a folder of LR images')
    parser.add_argument('--ref', action='append', default=None, help='reference image (repeat for several)')
    parser.add_argument('--ref-dir', default=None, help='references matched by file name (or sub-folder per image)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--tile', type=int, default=None, help='tile size in LR pixels (bounded memory)')
    parser.add_argument('--tile-pad', type=int, default=16, help='tile overlap in LR pixels')
    parser.add_argument('--max-memory', default=None, help="working-memory budget, e.g. '6G' (picks chunks/tiles)")
    parser.add_argument('--search-geometry', type=int, nargs=3, default=None, metavar=('WINDOW', 'STRIDE', 'PAD'),
                        help='EXTRACTER: change the search geometry, e.g. 12 4 4 for large images')
    parser.add_argument('--param-key', default=None, help="checkpoint key (default: params_ema, else params)")
    parser.add_argument('--texture-map', action='store_true', help='also write where the textures came from')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def run(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Path]]:
    args = build_parser().parse_args(argv)
    if bool(args.ref) == bool(args.ref_dir):
        raise InferenceError('give references with --ref (one or several) or --ref-dir, not both')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise InferenceError(f'--device {args.device}: CUDA is not available here')
    net = load_network(args.weights, args.opt, args.device, args.param_key)
    if args.search_geometry:
        if not hasattr(net, 'set_search_geometry'):
            raise InferenceError('--search-geometry works with EXTRACTER only (TTSR has a fixed search)')
        net.set_search_geometry(*args.search_geometry)
    stride = net.search_transfer.stride
    data_opt: Dict[str, Any] = {'dataroot_lq': args.lr, 'stride': stride}
    if args.ref_dir:
        data_opt['dataroot_ref'] = args.ref_dir
    elif len(args.ref) == 1:
        data_opt['ref_path'] = args.ref[0]
    else:
        lq_names = [args.lr] if os.path.isfile(args.lr) else None
        if lq_names is None:
            raise InferenceError('several --ref work with one --lr image; for folders use --ref-dir with a '
                                 'sub-folder of references per image')
        data_opt['refs'] = {os.path.basename(args.lr): list(args.ref)}
    dataset = RefSRInferenceDataset(data_opt)
    out_dir = Path(args.output)
    planned = [output_paths(out_dir, Path(p).stem, args.texture_map) for p in dataset.lq_paths]
    existing = [str(p) for paths in planned for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f'{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --overwrite')
    run_kwargs: Dict[str, Any] = {}
    if args.tile:
        run_kwargs['tile'] = {'tile_size': args.tile, 'tile_pad': args.tile_pad}
    if args.max_memory:
        run_kwargs['max_memory'] = args.max_memory
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc='images', unit='img'):
        sample = {k: (v.unsqueeze(0) if isinstance(v, torch.Tensor) else
                      [t.unsqueeze(0) for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor)
                      else v) for k, v in dataset[i].items()}
        result = super_resolve(net, sample, args.device, run_kwargs, args.texture_map)
        paths = planned[i]
        save_png(result['sr'], paths['sr'])
        save_png(result['bicubic'], paths['bicubic'])
        panels = [('bicubic x4', result['bicubic']), ('SR x4', result['sr'])]
        panels += [(f'reference {j + 1}', r) for j, r in enumerate(result['refs'])]
        save_png(side_by_side(panels, height=result['sr'].shape[0]), paths['compare'])
        if args.texture_map:
            panels = [('SR x4', result['sr'])] + result['texture_panels']
            save_png(side_by_side(panels, height=result['sr'].shape[0]), paths['texture'])
    return planned


def main() -> None:
    try:
        planned = run()
    except (InferenceError, FileNotFoundError, FileExistsError, ImageReadError, MemoryBudgetError, ValueError) as err:
        raise SystemExit(f'error: {err}') from err
    print(f'wrote {sum(len(p) for p in planned)} files for {len(planned)} image(s)')


if __name__ == '__main__':
    main()
