"""Our registries, their link to BasicSR's, and an inference path that never imports basicsr."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from basicsr.utils.registry import ARCH_REGISTRY as BASICSR_ARCHS
from basicsr.utils.registry import DATASET_REGISTRY as BASICSR_DATASETS
from basicsr.utils.registry import LOSS_REGISTRY as BASICSR_LOSSES
from basicsr.utils.registry import MODEL_REGISTRY as BASICSR_MODELS
from basicsr.utils.registry import Registry as BasicSRRegistry

from extracter.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_basicsr_registries_hold_every_one_of_our_components():
    """(conftest ran use_basicsr.) BasicSR's builders find each of our components by name, as the same object."""
    for ours, theirs, names in ((ARCH_REGISTRY, BASICSR_ARCHS, ('Extracter', 'TTSR', 'DRCT', 'RefSRDiscriminator')),
                                (DATASET_REGISTRY, BASICSR_DATASETS, ('RefSRTrainDataset', 'RefSRInferenceDataset')),
                                (LOSS_REGISTRY, BASICSR_LOSSES, ('GradientDensityLoss',)),
                                (MODEL_REGISTRY, BASICSR_MODELS, ('RefSRModel', 'SISRModel'))):
        assert set(names) <= set(ours.keys())
        for name, obj in ours:
            assert theirs.get(name) is obj


def test_a_linked_registry_forwards_later_registrations_and_refuses_a_clash():
    ours, theirs = Registry('things'), BasicSRRegistry('things')

    @ours.register()
    class Before:
        pass

    ours.link(theirs)
    ours.link(theirs)  # idempotent
    assert theirs.get('Before') is Before

    @ours.register()
    class After:
        pass

    assert theirs.get('After') is After
    with pytest.raises(KeyError, match="already registered in 'things'"):
        ours.register(After)

    class Clash:
        pass

    Clash.__name__ = 'Taken'
    theirs.register(type('Taken', (), {}))
    with pytest.raises(KeyError, match="different object named 'Taken'"):
        ours.register(Clash)
    with pytest.raises(KeyError, match="No object named 'Missing' found in 'things' registry"):
        ours.get('Missing')


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


HEAVY = "('basicsr', 'torchvision', 'scipy', 'torch._dynamo')"


def test_import_extracter_is_light_and_a_lookup_loads_the_archs():
    out = _run(f'''
        import sys
        import extracter
        assert 'torch' not in sys.modules, 'import extracter imported torch'
        from extracter.registry import ARCH_REGISTRY
        print(ARCH_REGISTRY.get('Extracter').__name__, extracter.archs.__name__)
        print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY} or m == 'torch._dynamo'))
    ''')
    assert out.splitlines() == ['Extracter extracter.archs', '[]']


def test_inference_end_to_end_never_imports_basicsr_torchvision_or_scipy(tmp_path):
    """The inference path (infer.py's imports, a network from the registry, run_refsr) stays off the heavy imports
    that BasicSR's package pulls in."""
    out = _run(f'''
        import runpy, sys
        import torch
        sys.argv = ['infer.py', '--help']
        infer = runpy.run_path('extracter/infer.py', run_name='not_main')
        from extracter.registry import ARCH_REGISTRY
        from extracter.inference.engine import run_refsr
        net = ARCH_REGISTRY.get('Extracter')(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8,
                                             dfe_init='random').eval()
        with torch.no_grad():
            sr = run_refsr(net, torch.rand(1, 3, 12, 12), torch.rand(1, 3, 48, 48))
        print(tuple(sr.shape))
        print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY} or m == 'torch._dynamo'))
    ''')
    assert out.splitlines() == ['(1, 3, 48, 48)', '[]']
