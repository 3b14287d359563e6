"""The optional ``faiss`` search method (faiss-cpu): registered like every method, equal to the exact search, and
refused with one line where faiss is not installed. The CI installs the extra (make app-deps), so it runs there."""

import importlib.util

import pytest
import torch

from extracter.inference.engine import run_refsr
from extracter.inference.options import InferenceOptionError, InferenceOptions
from extracter.search import get_method, method_names, search_references
from tests.test_search_threads import _inputs, _net

HAS_FAISS = importlib.util.find_spec('faiss') is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss-cpu is not installed (pip install 'extracter[faiss]')")


def _features(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g))  # non-negative, as relu3_1


def test_faiss_is_a_registered_exact_method():
    assert 'faiss' in method_names()
    method = get_method('faiss')
    assert method.exact and method.transfer == 'index'
    assert (method.available() is None) == HAS_FAISS


@needs_faiss
@pytest.mark.parametrize('geometry,top_k', [((3, 1, 1), 1), ((6, 2, 2), 3)])
def test_faiss_search_equals_the_exact_search_over_several_references(geometry, top_k):
    net = _net()
    lr = _features((2, 16, 10, 12), 0)
    refs = [_features((2, 16, 12, 9), 1), _features((2, 16, 8, 14), 2)]
    dense = net.search_spec(method='dense', geometry=geometry)
    faiss = dense.replace(method='faiss', chunk_size=17, key_chunk_size=23)  # several blocks of each
    exact = search_references(lr, refs, dense, top_k)
    got = search_references(lr, refs, faiss, top_k)
    torch.testing.assert_close(got[0], exact[0], atol=1e-5, rtol=0)
    assert (got[1] != exact[1]).float().mean() < 0.01  # ties within float rounding aside


@needs_faiss
def test_run_refsr_with_faiss_equals_the_chunked_search():
    net = _net()
    lr, ref = _inputs()
    chunked = run_refsr(net, lr, ref, search_mode='chunked', search_geometry=(6, 2, 2))
    faiss = run_refsr(net, lr, ref, search_mode='faiss', search_geometry=(6, 2, 2), max_memory='1G',
                      return_aux=True)
    assert faiss.search_used.startswith('faiss search') and faiss.plan.search_mode == 'faiss'
    torch.testing.assert_close(faiss.sr, chunked, atol=1e-4, rtol=0)


def test_without_faiss_the_method_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(type(get_method('faiss')), 'available', lambda self: 'needs the optional package faiss-cpu')
    with pytest.raises(InferenceOptionError, match='^search.mode faiss: needs the optional package faiss-cpu$'):
        InferenceOptions.from_mapping({'search': {'mode': 'faiss'}})
    lr, ref = _inputs()
    with pytest.raises(ValueError, match='search mode faiss: needs the optional package faiss-cpu'):
        run_refsr(_net(), lr, ref, search_mode='faiss')
