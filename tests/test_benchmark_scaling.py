"""scripts/benchmark_scaling.py: the options that reach each case's subprocess (``--search`` for ``ours``)."""

from pathlib import Path

from scripts import benchmark_scaling as bs


def test_search_option_reaches_the_case_and_its_run_refsr_arguments(tmp_path):
    args = bs.build_parser().parse_args(['--sizes', '2048', '--methods', 'ours', '--search', 'approximate',
                                         '--budget', '2048=6G'])
    assert args.search == 'approximate'
    cmd = bs.child_command(2048, 'ours', '6G', args, tmp_path)
    assert cmd[cmd.index('--search') + 1] == 'approximate'
    case = bs.build_parser().parse_args(cmd[2:])  # what the subprocess parses (after python and the script)
    assert (case.case_size, case.case_method, case.case_budget, case.search) == (2048, 'ours', '6G', 'approximate')
    assert bs.case_kwargs(case.case_method, case.case_budget, case.search) == {'max_memory': '6G',
                                                                               'search_mode': 'approximate'}
    assert bs.default_out_dir(args).name == 'w6_s2_p2_approximate'


def test_search_defaults_to_the_exact_chunked_search_and_untiled_methods_ignore_it():
    args = bs.build_parser().parse_args(['--sizes', '512'])
    assert args.search == 'chunked'
    assert bs.case_kwargs('ours', '2G', args.search) == {'max_memory': '2G', 'search_mode': 'chunked'}
    assert bs.case_kwargs('dense', '2G', 'approximate') == {'search_mode': 'dense'}
    assert bs.case_kwargs('chunked', '2G', 'auto') == {'search_mode': 'chunked'}
    assert bs.default_out_dir(args) == Path(bs.ROOT) / 'results' / 'benchmark_scaling' / 'w6_s2_p2'


def test_unknown_search_is_refused_in_one_line(tmp_path, capsys):
    status = bs.main(['--sizes', '512', '--search', 'exact', '--out', str(tmp_path / 'bs')])
    err = capsys.readouterr().err
    assert status == 2
    assert '--search' in err and "'exact'" in err
    assert not (tmp_path / 'bs').exists()
