"""The architecture descriptors (extracter/archs/descriptor.py): one per architecture, its facts agree with built
networks, ``detect`` reads options off state dicts (round trip, wrong family -> None), and no code outside
``archs/`` probes networks with hasattr/getattr."""

import ast
import inspect
import random
from pathlib import Path

import pytest
import torch

from extracter.archs.descriptor import (
    CONVERTER_FORMATS,
    ArchDescriptor,
    descriptor_of,
    descriptors,
    detect_options,
    find_descriptor,
)
from extracter.archs.refsr_base import RefSRNet
from extracter.archs.vgg import TextureExtractor
from extracter.registry import ARCH_REGISTRY

ROOT = Path(__file__).resolve().parents[1]

# registered architectures without a descriptor, and why
UNDESCRIBED = {'RefSRDiscriminator': "the WGAN-GP critic: a training loss' network, never loaded for inference",
               'ContrasExtractorSep': "C2-Matching's contrastive correspondence network: a part trained on its own "
                                      '(stages 1-2), not an SR network'}

# tiny options per family (and variants that change a fact: stride, scale, the window)
TINY = {
    'Extracter': dict(num_res_blocks='1+1+0+1', num_grad_blocks='1+0+1+1', n_feats=8, top_k=2, dfe_init='random'),
    'TTSR': dict(num_res_blocks='1+1+1+0', n_feats=6, lte_init='random'),
    'DRCT': dict(upscale=2, img_size=16, window_size=8, embed_dim=12, gc=6, depths=[1], num_heads=[2], mlp_ratio=2,
                 upsampler='pixelshuffle'),
    'C2Matching': dict(ngf=8, n_blocks=1, groups=4, vgg_init='random'),
}
VARIANTS = {
    'Extracter': TINY['Extracter'],
    'Extracter stride 2': dict(TINY['Extracter'], window=6, stride=2, padding=2, vgg19_path='/nowhere/vgg19.pth'),
    'TTSR': TINY['TTSR'],
    'DRCT x2': TINY['DRCT'],
    'DRCT x3 window 4': dict(TINY['DRCT'], upscale=3, window_size=4),
    'DRCT x4 img_size below the window': dict(TINY['DRCT'], upscale=4, img_size=6),
    'C2Matching': TINY['C2Matching'],
}


def family(variant: str) -> str:
    return variant.split()[0]


def build(name: str, options: dict) -> torch.nn.Module:
    descriptor = descriptor_of(name)
    return descriptor.arch(**descriptor.options_for_weights(options)).eval()


def test_every_registered_architecture_has_a_descriptor():
    names = set(ARCH_REGISTRY.keys())
    assert set(descriptors()) == names - set(UNDESCRIBED)
    assert set(UNDESCRIBED) <= names
    for name, descriptor in descriptors().items():
        cls = ARCH_REGISTRY.get(name)
        assert isinstance(descriptor, ArchDescriptor) and descriptor.name == name and descriptor.arch is cls
        assert cls.descriptor is descriptor  # stated by the class, in its own file
        assert descriptor_of(name) is descriptor_of(cls) is descriptor_of(descriptor) is descriptor
        assert set(descriptor.converters) <= set(CONVERTER_FORMATS)
        assert descriptor.kind == ('refsr' if descriptor.uses_reference else 'sisr')
        params = inspect.signature(cls.__init__).parameters
        for option in descriptor.init_only_options + ((descriptor.feature_extractor_init,)
                                                      if descriptor.feature_extractor_init else ()):
            assert option in params, (name, option)  # facts name real constructor options
        if isinstance(descriptor.scale, str):
            assert descriptor.scale in params
    for name in UNDESCRIBED:
        assert find_descriptor(name) is None and find_descriptor(ARCH_REGISTRY.get(name)) is None
        with pytest.raises(KeyError, match=f'{name}.*not an SR architecture'):
            descriptor_of(name)
    assert find_descriptor('NoSuchNet') is None and find_descriptor(torch.nn.Conv2d(1, 1, 1)) is None


def test_every_converter_format_belongs_to_one_architecture():
    owners = [c for d in descriptors().values() for c in d.converters]
    assert sorted(owners) == sorted(CONVERTER_FORMATS)
    assert descriptor_of('Extracter').converters == ('extracter-official',)
    assert set(descriptor_of('TTSR').converters) == {'ttsr-official', 'mmagic-ttsr'}


@pytest.mark.parametrize('variant', VARIANTS, ids=VARIANTS.keys())
def test_facts_agree_with_a_built_network(variant):
    name, options = family(variant), VARIANTS[variant]
    descriptor = descriptor_of(name)
    torch.manual_seed(0)
    net = build(name, options)
    assert descriptor_of(net) is descriptor
    assert descriptor.scale_for(options) == net.scale_of()
    assert descriptor.size_multiples_for(options) == net.size_multiples()
    assert descriptor.uses_reference == ('ref' in inspect.signature(net.forward).parameters)
    assert descriptor.uses_reference == isinstance(net, RefSRNet)
    lr_mult = net.size_multiples()[0]
    at_output = descriptor.reference_size == 'output'  # the reference at the output's size (C2-Matching)
    lr = torch.rand(1, 3, (3 if at_output else 2) * lr_mult, 4 * lr_mult)
    with torch.no_grad():
        if descriptor.uses_reference:
            ref_hw = (4 * lr.shape[-2], 4 * lr.shape[-1]) if at_output else (4 * lr_mult, 8 * lr_mult)
            sr = net(lr, torch.rand(1, 3, *ref_hw))
        else:
            sr = net(lr)
    assert sr.shape[-2:] == (descriptor.scale_for(options) * lr.shape[-2], descriptor.scale_for(options) * lr.shape[-1])
    assert descriptor.min_tile_pad > 0
    weights_options = descriptor.options_for_weights(dict(options, type=name))
    assert 'type' not in weights_options and not set(descriptor.init_only_options) & set(weights_options)
    if descriptor.uses_reference:
        assert isinstance(getattr(net, descriptor.feature_extractor), TextureExtractor)
        assert net.feature_extractor() is getattr(net, descriptor.feature_extractor)
        assert weights_options[descriptor.feature_extractor_init] == 'random'
        assert net.min_tile_pad == descriptor.min_tile_pad and descriptor.main_maps_per_lr_px > 0
        if descriptor.own_search:  # the correspondence is the network's own stage, with one geometry
            with pytest.raises(ValueError, match='fixed correspondence'):
                net.set_search_geometry(6, 2, 2)
            assert net.default_search_spec.geometry == (3, 1, 1)
            return
        st = net.search_transfer
        if descriptor.adjustable_geometry:
            net.set_search_geometry(6, 2, 2)
            assert net.size_multiples() == descriptor.size_multiples_for(dict(options, stride=2)) == (2, 8)
        else:
            with pytest.raises(ValueError, match='fixed search geometry'):
                net.set_search_geometry(6, 2, 2)
            assert (st.window, st.stride, st.padding) == (3, 1, 1)
            assert descriptor.size_multiples_for(dict(options, stride=2)) == net.size_multiples()
    else:
        assert descriptor.feature_extractor is None and descriptor.main_maps_per_lr_px is None


def test_the_scale_is_read_from_options_without_building():
    assert descriptor_of('DRCT').scale_for({}) == inspect.signature(descriptor_of('DRCT').arch).parameters[
        'upscale'].default
    assert descriptor_of('DRCT').scale_for({'type': 'DRCT', 'upscale': 3}) == 3
    assert descriptor_of('Extracter').scale_for({'upscale': 3}) == 4 == descriptor_of('TTSR').scale_for({})
    assert descriptor_of('Extracter').size_multiples_for({}) == (1, 4)  # the released geometry 3/1/1


def random_options(name: str, rng: random.Random) -> dict:
    """Small random options of one family, within what its weights determine."""
    if name == 'Extracter':
        return dict(num_res_blocks=[rng.randint(0, 2) for _ in range(4)],
                    num_grad_blocks=[rng.randint(0, 2) for _ in range(4)],
                    n_feats=rng.choice([4, 6, 8]), top_k=rng.randint(1, 3), dfe_init='random')
    if name == 'TTSR':
        return dict(num_res_blocks=[rng.randint(0, 2) for _ in range(4)], n_feats=rng.choice([4, 6, 8]),
                    lte_init='random')
    if name == 'C2Matching':
        return dict(ngf=rng.choice([4, 8]), n_blocks=rng.randint(1, 2), groups=rng.choice([1, 2, 4]),
                    vgg_init='random')
    heads = rng.choice([2, 3])
    return dict(TINY['DRCT'], upscale=rng.choice([2, 3, 4]), embed_dim=6 * heads, gc=heads * rng.randint(1, 3),
                depths=[1] * rng.randint(1, 2), num_heads=[heads] * 2, window_size=rng.choice([4, 8]),
                img_size=rng.choice([8, 16]))


# what detect reads off the weights, per family (the rest: the descriptor's not_detected)
DETECTED = {
    'Extracter': ('num_res_blocks', 'num_grad_blocks', 'n_feats', 'top_k'),
    'TTSR': ('num_res_blocks', 'n_feats'),
    'DRCT': ('upscale', 'embed_dim', 'gc', 'window_size', 'img_size', 'mlp_ratio', 'upsampler'),
    'C2Matching': ('ngf', 'n_blocks', 'groups'),
}


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('name', sorted(DETECTED))
def test_detect_round_trip(name, seed):
    rng = random.Random(seed)
    options = random_options(name, rng)
    torch.manual_seed(seed)
    net = build(name, options)
    state = net.state_dict()
    detected = descriptor_of(name).detect(state)
    assert detected is not None and detected['type'] == name
    for key in DETECTED[name]:
        assert detected[key] == options[key], key
    if name == 'DRCT':
        assert len(detected['depths']) == len(options['depths'])
        assert detected['num_heads'] == options['num_heads'][:len(options['depths'])]
    rebuilt = build(name, detected)
    rebuilt.load_state_dict(state, strict=True)
    assert detect_options({'params_ema': {f'module.{k}': v for k, v in state.items()}}) == detected


def test_every_family_with_a_reader_is_covered():
    assert {n for n, d in descriptors().items() if d.read_options is not None} == set(DETECTED)


@pytest.fixture(scope='module')
def tiny_states():
    torch.manual_seed(0)
    return {name: build(name, options).state_dict() for name, options in TINY.items()}


def test_a_state_dict_of_another_family_detects_as_none(tiny_states):
    for name, descriptor in descriptors().items():
        assert descriptor.detect(tiny_states[name]) is not None
        for other, state in tiny_states.items():
            if other != name:
                assert descriptor.detect(state) is None, (name, other)
    critic = ARCH_REGISTRY.get('RefSRDiscriminator')(in_size=32).state_dict()
    for state in (critic, {}, {'conv.weight': torch.zeros(2, 3, 3, 3)}):
        assert detect_options(state) is None


@pytest.mark.parametrize('name', sorted(TINY))
def test_an_incomplete_or_altered_state_dict_detects_as_none(tiny_states, name):
    state = tiny_states[name]
    descriptor = descriptor_of(name)
    last = sorted(state)[-1]
    assert descriptor.detect({k: v for k, v in state.items() if k != last}) is None  # a missing tensor
    assert descriptor.detect({**state, 'extra.weight': torch.zeros(1)}) is None  # an unexpected one
    key = next(k for k, v in state.items() if v.dim() == 4)
    resized = torch.zeros(state[key].shape[0], state[key].shape[1] + 1, *state[key].shape[2:])
    assert descriptor.detect({**state, key: resized}) is None  # a tensor of another shape


# ---------------------------------------------------------------- no probing of networks outside archs/
NETWORK_NAMES = {'net', 'network', 'arch', 'model_net', 'net_g', 'bare'}
FACT_NAMES = ({f for f in ArchDescriptor.__dataclass_fields__} | {'descriptor', 'facts', 'options_from_state_dict',
              'scale_for', 'size_multiples_for', 'options_for_weights', 'scale_of', 'size_multiples', 'NOT_INFERABLE'})


def probes(source: str, filename: str = '<string>') -> list:
    """(line, call) of each hasattr/getattr on a network: its first argument named like one (``net``, ``arch``...)
    or its attribute one of the descriptor's facts."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ('hasattr', 'getattr') and len(node.args) >= 2):
            continue
        target, attr = node.args[0], node.args[1]
        named = isinstance(target, ast.Name) and target.id in NETWORK_NAMES
        fact = isinstance(attr, ast.Constant) and attr.value in FACT_NAMES
        if named or fact:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_probe_scan_finds_probes():
    source = ("a = getattr(net, 'uses_reference', True)\n"
              "b = hasattr(arch, 'anything')\n"
              "c = getattr(registry.get(name), 'min_tile_pad', 0)\n"
              "d = getattr(self, 'gt', None)\n"
              "e = getattr(cls, 'DEFAULTS', None)\n")
    assert [line for line, _ in probes(source)] == [1, 2, 3]


def test_no_consumer_probes_networks():
    files = [p for p in sorted((ROOT / 'extracter').rglob('*.py')) if 'archs' not in p.relative_to(ROOT).parts]
    files += sorted((ROOT / 'scripts').glob('*.py'))
    assert len(files) > 40
    offenders = [f'{p.relative_to(ROOT)}:{line}: {call}' for p in files
                 for line, call in probes(p.read_text(encoding='utf-8'), str(p))]
    assert not offenders, 'probe the descriptor (descriptor_of) instead:\n' + '\n'.join(offenders)
