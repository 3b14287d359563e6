"""The web page's job runner with a C2-Matching checkpoint: offered by its weights alone, run with the page's
memory budget (its reference of another size padded), and several references refused in one sentence."""

import pytest
import torch

from extracter.app.jobs import JobError, JobRequest, JobRunner, find_models
from extracter.archs.c2_matching_arch import C2Matching
from tests.app_helpers import motorcycle_pair, save

pytestmark = pytest.mark.usefixtures('one_thread')


def test_page_runs_c2matching_and_refuses_several_references(tmp_path):
    pytest.importorskip('skimage', reason='the example pair comes from scikit-image')
    models = tmp_path / 'models'
    models.mkdir()
    torch.manual_seed(0)
    torch.save({'params': C2Matching(ngf=8, n_blocks=1, groups=8, vgg_init='random').state_dict()},
               models / 'c2.pth')  # no YAML: read off the weights
    found = find_models(models)
    assert [(m.label, m.arch, m.uses_reference) for m in found] == [('c2.pth', 'C2Matching', True)]
    runner = JobRunner(tmp_path / 'app', models=found, max_memory='1G')
    pair = motorcycle_pair(96, ref_scale=0.25)  # LR 24 x 24, reference 185 x 125
    uploads = tmp_path / 'app' / 'uploads' / 'u0'
    lr, ref = str(save(pair['lr'], uploads / 'lr.png')), str(save(pair['ref'], uploads / 'ref.png'))
    other = str(save(pair['ref'][:, ::-1].copy(), uploads / 'ref2.png'))
    result = runner.run(JobRequest(lr=lr, refs=[ref]))
    assert result.files['sr'].is_file() and result.sr.shape[:2] == (96, 96)
    assert 'own correspondence search' in result.plan
    with pytest.raises(JobError, match=r'c2.pth \(C2Matching\) takes one reference photo .* 2 were given'):
        runner.run(JobRequest(lr=lr, refs=[ref, other]))
