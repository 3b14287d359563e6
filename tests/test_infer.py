"""extracter/infer.py: every input form, several references, pictures, and the error cases."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.archs.search_transfer import split_index
from extracter.data.image_io import ImageReadError
from extracter.infer import InferenceError, run
from extracter.inference import run_refsr
from extracter.inference.network import load_network
from extracter.registry import ARCH_REGISTRY

NET_OPT = dict(type='Extracter', num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2,
               window=6, stride=2, padding=2, dfe_init='random')


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp('weights')
    opt = dict(NET_OPT)
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    torch.save({'params': net.state_dict()}, folder / 'tiny.pth')
    (folder / 'tiny.yml').write_text(yaml.safe_dump({'network_g': NET_OPT}))
    return folder / 'tiny.pth'


@pytest.fixture(scope='module')
def images(shared_data, tmp_path_factory):
    """A small real LR/Ref pair cut from the TTSR demo pair (odd LR size on purpose), plus odd modes."""
    folder = tmp_path_factory.mktemp('imgs')
    lr = Image.open(shared_data / 'refsr-pairs' / 'ttsr-demo' / 'lr.png').convert('RGB')
    ref = Image.open(shared_data / 'refsr-pairs' / 'ttsr-demo' / 'ref.png').convert('RGB')
    (folder / 'lr').mkdir()
    (folder / 'ref').mkdir()
    lr.crop((20, 30, 45, 51)).save(folder / 'lr' / 'a.png')  # 25 x 21
    lr.crop((40, 60, 64, 84)).convert('L').save(folder / 'lr' / 'b.png')  # greyscale
    ref.crop((80, 120, 180, 220)).save(folder / 'ref' / 'a.png')
    ref.crop((150, 250, 230, 330)).convert('RGBA').save(folder / 'ref' / 'b.png')  # with alpha
    (folder / 'ref' / 'b_extra').mkdir()
    return folder


def _size(path):
    with Image.open(path) as img:
        return img.size


def test_single_reference_writes_all_pictures(weights, images, tmp_path):
    out = tmp_path / 'out'
    run(['--weights', str(weights), '--lr', str(images / 'lr' / 'a.png'), '--ref', str(images / 'ref' / 'a.png'),
         '-o', str(out), '--texture-map'])
    assert _size(out / 'a_sr.png') == (100, 84) == _size(out / 'a_bicubic.png')  # 4 x (25, 21)
    compare_w, compare_h = _size(out / 'a_compare.png')
    assert compare_h > 84 and compare_w > 3 * 84  # bicubic | SR | reference, labelled
    texture_w, _ = _size(out / 'a_texture.png')
    assert texture_w > 4 * 84  # SR | relevance | source position | reference colour code
    sr = np.asarray(Image.open(out / 'a_sr.png'))
    assert sr.shape == (84, 100, 3) and sr.std() > 0


def test_folder_with_references_matched_by_name(weights, images, tmp_path):
    out = tmp_path / 'out'
    planned = run(['--weights', str(weights), '--lr', str(images / 'lr'), '--ref-dir', str(images / 'ref'),
                   '-o', str(out)])
    assert [p['sr'].name for p in planned] == ['a_sr.png', 'b_sr.png']
    assert _size(out / 'b_sr.png') == (96, 96)


def test_existing_outputs_are_kept_unless_overwrite(weights, images, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a_sr.png').write_bytes(b'user file')
    args = ['--weights', str(weights), '--lr', str(images / 'lr' / 'a.png'), '--ref', str(images / 'ref' / 'a.png'),
            '-o', str(out)]
    with pytest.raises(FileExistsError, match='a_sr.png'):
        run(args)
    assert (out / 'a_sr.png').read_bytes() == b'user file'
    run(args + ['--overwrite'])
    assert _size(out / 'a_sr.png') == (100, 84)


def test_error_cases(weights, images, tmp_path):
    base = ['--weights', str(weights), '-o', str(tmp_path / 'o')]
    with pytest.raises(FileNotFoundError, match='missing.png'):
        run(base + ['--lr', str(images / 'lr' / 'a.png'), '--ref', str(tmp_path / 'missing.png')])
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    with pytest.raises(ImageReadError, match='bad.png'):
        run(base + ['--lr', str(bad), '--ref', str(images / 'ref' / 'a.png')])
    with pytest.raises(FileNotFoundError, match='weights not found'):
        load_network(str(tmp_path / 'nowhere.pth'))
    (tmp_path / 'no_yaml.pth').write_bytes((weights).read_bytes())  # without its YAML: read off the weights
    net = load_network(str(tmp_path / 'no_yaml.pth'))
    assert (net.n_feats, net.num_res_blocks, net.search_transfer.top_k) == (8, [1, 1, 1, 1], 2)
    torch.save({'params': {'conv.weight': torch.zeros(2, 3, 3, 3)}}, tmp_path / 'foreign.pth')
    with pytest.raises(FileNotFoundError, match=r'network options not found: .*foreign.yml .*no architecture of this '
                                                r'package recognises .*foreign.pth'):
        load_network(str(tmp_path / 'foreign.pth'))
    with pytest.raises(InferenceError, match='--ref'):
        run(base + ['--lr', str(images / 'lr' / 'a.png')])


def test_several_references_search_their_union(weights, images, tmp_path):
    net = load_network(str(weights))
    lr = torch.rand(1, 3, 12, 16)
    ref_a, ref_b = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 32, 56)
    with torch.no_grad():
        assert torch.allclose(run_refsr(net, lr, [ref_a]), net(lr, ref_a), atol=1e-6)
        both = run_refsr(net, lr, [ref_a, ref_b], return_aux=True)
        # with top-1, a duplicated reference offers the same best patches: the result is unchanged
        opt = {**NET_OPT, 'top_k': 1}
        top1 = ARCH_REGISTRY.get(opt.pop('type'))(**opt).eval()
        assert torch.allclose(run_refsr(top1, lr, [ref_a, ref_a]), top1(lr, ref_a), atol=1e-6)
    ids, _ = split_index(both.index[0, 0], both.patch_counts)
    assert set(ids.unique().tolist()) <= {0, 1}
    # the union's top-1 scores are at least as high as either reference's own
    with torch.no_grad():
        s_a = net(lr, ref_a, return_aux=True)['S'][0].flatten()
        s_b = net(lr, ref_b, return_aux=True)['S'][0].flatten()
    assert (both.scores[0, 0] >= torch.maximum(s_a, s_b) - 1e-6).all()
    out = tmp_path / 'multi'
    run(['--weights', str(weights), '--lr', str(images / 'lr' / 'a.png'), '--ref', str(images / 'ref' / 'a.png'),
         '--ref', str(images / 'ref' / 'b.png'), '-o', str(out), '--texture-map'])
    assert _size(out / 'a_sr.png') == (100, 84)


def test_tiled_inference_matches_untiled(weights, images, tmp_path):
    run(['--weights', str(weights), '--lr', str(images / 'lr' / 'a.png'), '--ref', str(images / 'ref' / 'a.png'),
         '-o', str(tmp_path / 'full')])
    run(['--weights', str(weights), '--lr', str(images / 'lr' / 'a.png'), '--ref', str(images / 'ref' / 'a.png'),
         '-o', str(tmp_path / 'tiled'), '--tile', '12', '--tile-pad', '6'])
    full = np.asarray(Image.open(tmp_path / 'full' / 'a_sr.png')).astype(float)
    tiled = np.asarray(Image.open(tmp_path / 'tiled' / 'a_sr.png')).astype(float)
    mse = ((full - tiled) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) > 40
