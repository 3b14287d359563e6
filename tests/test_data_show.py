"""scripts/show_dataset.py: an image grid of a dataset's samples, written once."""


from PIL import Image


def test_show_dataset_grid(cufed_root, tmp_path, capsys):
    from extracter.tools.show_dataset import main

    out = tmp_path / 'grid.png'
    args = ['--type', 'CUFED5Dataset', '--set', f'dataroot={cufed_root / "test" / "CUFED5"}',
            '--set', 'ref_level=2',
            '-n', '3', '--height', '64', '-o', str(out)]
    assert main(args) == 0
    grid = Image.open(out)
    assert grid.height == 16 + 3 * (64 + 4) + 4
    assert '2: lq (24, 24)' in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 2 and 'exists' in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args[:-2] + ['--set', 'nonsense=1', '-o', str(tmp_path / 'x.png')]) == 2
    assert "unknown option(s) ['nonsense']" in capsys.readouterr().err
    assert not (tmp_path / 'x.png').exists()
