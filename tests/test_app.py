"""The web page's job runner (extracter/app/jobs.py): the same SR as the command line, errors in plain words, one job
at a time with a queue that says so, files read and written only in its own folders. No Gradio needed; the page
itself is driven in a real browser by tests/test_app_browser.py."""

import io
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extracter.app.jobs import (
    JobCancelled,
    JobError,
    JobRequest,
    JobRunner,
    default_memory_budget,
    find_models,
    model_entry,
)
from extracter.infer import run as infer_run
from extracter.inference.memory_plan import parse_memory
from tests.app_helpers import motorcycle_pair, other_scenes, psnr_y, read_png, save, tiny_checkpoint

BUDGET = '1G'


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp('models')
    tiny_checkpoint(folder / 'refsr')
    return folder


@pytest.fixture(scope='module')
def pair():
    return motorcycle_pair(96, ref_scale=0.25)  # LR 24 x 24, reference 185 x 125


def make_runner(tmp_path: Path, models: Path, **kwargs) -> JobRunner:
    return JobRunner(tmp_path / 'app', models=find_models(models), max_memory=BUDGET, **kwargs)


def upload(runner: JobRunner, name: str, data) -> str:
    """A file as the page stores an upload: in a folder of its own under the runner's upload folder."""
    path = runner.upload_dir / f'u{len(list(runner.upload_dir.glob("*"))) if runner.upload_dir.exists() else 0}' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        save(data, path)
    return str(path)


def files_under(folder: Path) -> set:
    return {p for p in folder.rglob('*') if p.is_file()}


def test_models_are_found_with_their_kind(models):
    found = find_models(models)
    assert [(m.label, m.arch, m.uses_reference) for m in found] == [('refsr/tiny.pth', 'Extracter', True)]
    (models / 'orphan.pth').write_bytes(b'x')  # no options beside it: not offered
    assert len(find_models(models)) == 1
    with pytest.raises(JobError, match='no options file beside it .* cannot be read off the weights'):
        model_entry(models / 'orphan.pth')
    (models / 'orphan.pth').unlink()


def test_default_memory_budget_is_half_the_free_memory():
    budget = parse_memory(default_memory_budget())
    with open('/proc/meminfo') as f:
        available = int(next(line for line in f if line.startswith('MemAvailable')).split()[1]) * 1024
    assert 2 ** 29 <= budget <= max(2 ** 29, 0.5 * available * 1.2)


def test_job_gives_the_command_lines_sr(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    stages = []
    result = runner.run(JobRequest(lr=lr, refs=[ref]), lambda p: stages.append(p))
    cli_out = tmp_path / 'cli'
    infer_run(['--weights', str(models / 'refsr' / 'tiny.pth'), '--lr', lr, '--ref', ref, '-o', str(cli_out),
               '--max-memory', BUDGET])
    cli_sr = read_png(cli_out / 'lr_sr.png')
    page_sr = read_png(result.files['sr'])
    assert page_sr.shape == (96, 96, 3) == pair['hr'].shape
    np.testing.assert_array_equal(page_sr, cli_sr)
    assert psnr_y(page_sr, pair['hr']) == psnr_y(cli_sr, pair['hr'])
    np.testing.assert_array_equal(read_png(result.files['bicubic']), read_png(cli_out / 'lr_bicubic.png'))
    texts = [p.stage for p in stages]
    assert texts[0] == 'reading the photos' and 'encoding the reference 1/1' in texts and texts[-1] == 'done'
    assert [p.fraction for p in stages] == sorted(p.fraction for p in stages)
    assert 0 <= result.relevance['min'] <= result.relevance['mean'] <= result.relevance['max'] <= 1 + 1e-6
    # the texture-source panels, one picture each (readable however many references), in the job's folder
    assert [label for label, _ in result.textures][0].startswith('relevance') and len(result.textures) == 3
    assert all(path.parent == result.folder and read_png(path).shape[0] >= 320 for _, path in result.textures)
    assert result.plan and result.search and 'search' in result.search and result.notes == []


def tiling_budget(weights: Path, lr_hw, ref_hw) -> int:
    """A budget under which the planner runs this LR tile by tile (the untiled run does not fit)."""
    from extracter.inference.memory_plan import MemoryBudgetError, NetSpec, estimate, plan_memory
    from extracter.inference.network import load_network

    spec = NetSpec.from_net(load_network(str(weights)))
    untiled = estimate(spec, lr_hw, ref_hw)['total']
    for fraction in (0.8, 0.6, 0.45, 0.3, 0.2):
        try:
            plan = plan_memory(spec, lr_hw, ref_hw, int(untiled * fraction))
        except MemoryBudgetError:
            continue
        if plan.tile_size is not None:
            return int(untiled * fraction)
    raise AssertionError('no budget makes this run tiled')


def test_tiles_report_progress_and_eta(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', motorcycle_pair(320)['lr'])  # 80 x 80: tiles (with 16 px of context) help
    ref = upload(runner, 'ref.png', pair['ref'])
    runner.run(JobRequest(lr=lr, refs=[ref]))  # a first job: the next one's ETA starts from its speed
    budget = tiling_budget(models / 'refsr' / 'tiny.pth', (80, 80), (128, 192))  # sizes padded to the multiples
    stages = []
    runner.run(JobRequest(lr=lr, refs=[ref], max_memory=str(budget)), stages.append)
    tiles = [p for p in stages if 'tiles' in p.stage]
    texts = list(dict.fromkeys(p.stage for p in tiles))  # the timer may repeat a report
    assert texts and texts == [f'main network, tiles {i}/{len(texts)}' for i in range(1, len(texts) + 1)]
    assert all(p.eta_s is not None for p in tiles) and tiles[-1].eta_s == 0
    assert 'left)' in tiles[0].text


def test_odd_photos_are_read_as_the_command_line_reads_them(models, pair, tmp_path, one_thread):
    """An EXIF-rotated JPEG, a greyscale LR and a 16-bit reference: the page's SR equals the CLI's."""
    runner = make_runner(tmp_path, models)
    lr = pair['lr'][:, :20]  # 24 rows x 20 columns, stored rotated with EXIF orientation 6 (shown upright)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(lr, 1))).save(buf, 'JPEG', quality=95, exif=exif)
    lr_path = upload(runner, 'rotated.jpg', buf.getvalue())
    ref16 = (pair['ref'][..., 0].astype(np.uint16) * 257)
    ref_path = runner.upload_dir / 'u16' / 'ref16.png'
    ref_path.parent.mkdir(parents=True)
    Image.fromarray(ref16).save(ref_path)
    grey_path = upload(runner, 'grey.png', pair['lr'][..., 1])
    for lr_in, expected_hw in ((lr_path, (96, 80)), (grey_path, (96, 96))):
        result = runner.run(JobRequest(lr=lr_in, refs=[str(ref_path)]))
        out = tmp_path / f'cli_{Path(lr_in).stem}'
        infer_run(['--weights', str(models / 'refsr' / 'tiny.pth'), '--lr', lr_in, '--ref', str(ref_path), '-o',
                   str(out), '--max-memory', BUDGET])
        assert result.sr.shape[:2] == expected_hw
        np.testing.assert_array_equal(read_png(result.files['sr']), read_png(out / f'{Path(lr_in).stem}_sr.png'))


BAD_INPUTS = {
    'text file named .png': (b'hello, this is not a picture', 'is not an image|not an image'),
    'empty file': (b'', 'empty file'),
    'truncated png': (None, 'corrupt or truncated'),
    '1x1 pixel photo': (np.zeros((1, 1, 3), np.uint8), 'only 1 x 1 pixels; it must be at least 16 x 16'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_photo_is_answered_in_plain_words(models, pair, tmp_path, case):
    runner = make_runner(tmp_path, models)
    data, expected = BAD_INPUTS[case]
    if data is None:
        buf = io.BytesIO()
        Image.fromarray(pair['ref']).save(buf, 'PNG')
        data = buf.getvalue()[:600]
    lr = upload(runner, 'my photo.png', data)
    ref = upload(runner, 'ref.png', pair['ref'])
    with pytest.raises(JobError, match=expected) as err:
        runner.run(JobRequest(lr=lr, refs=[ref], lr_name='my photo.png'))
    message = str(err.value)
    assert 'the photo to enlarge (my photo.png)' in message.lower()
    assert str(runner.output_dir) not in message  # no server paths on the page
    assert not runner.jobs_dir.exists() or not any(runner.jobs_dir.iterdir())  # nothing written


def test_request_errors_are_answered_in_plain_words(models, pair, tmp_path):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    tiny_ref = upload(runner, 'small.png', pair['ref'][:10, :12])
    cases = [
        (JobRequest(lr=None, refs=[ref]), 'Please add the photo to enlarge'),
        (JobRequest(lr=lr, refs=[tiny_ref]), r'Reference 1 \(small.png\) is 12 x 10 pixels, far smaller than the 24 x '
                                             '24 photo'),
        (JobRequest(lr=lr, refs=[ref], max_memory='lots'), "memory budget 'lots' is not a size"),
        (JobRequest(lr=lr, refs=[ref], max_memory='1M'), 'Not enough memory for this job: the memory budget of 1 MiB'),
        (JobRequest(lr=lr, refs=[ref], search_mode='fast'), "Unknown search mode 'fast'"),
        (JobRequest(lr=lr, refs=[]), 'no single-image model is available'),
        (JobRequest(lr=lr, refs=[ref], model=str(tmp_path / 'none.pth')), 'none.pth does not exist'),
        (JobRequest(lr=str(tmp_path / 'elsewhere.png'), refs=[ref]), 'was not uploaded through this page'),
    ]
    for request, expected in cases:
        with pytest.raises(JobError, match=expected):
            runner.run(request)
    assert not runner.busy and runner.waiting == 0  # every failure released the slot


def test_a_mismatched_checkpoint_is_an_error_not_a_crash(models, pair, tmp_path):
    other = tmp_path / 'other'
    tiny_checkpoint(other, 'wide')
    yml = other / 'wide.yml'
    yml.write_text(yml.read_text().replace('n_feats: 8', 'n_feats: 16'))
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    with pytest.raises(JobError, match='The model could not be loaded: .*wide.pth does not match Extracter'):
        runner.run(JobRequest(lr=lr, refs=[ref], model=str(other / 'wide.pth')))
    closed = make_runner(tmp_path, models, allow_model_paths=False)
    with pytest.raises(JobError, match='Choose one of the models offered'):
        closed.run(JobRequest(lr=lr, refs=[ref], model=str(other / 'wide.pth')))
    assert runner.run(JobRequest(lr=lr, refs=[ref])).sr.shape == (96, 96, 3)  # the runner still works


def test_files_are_read_and_written_only_in_its_own_folders(models, pair, tmp_path):
    runner = make_runner(tmp_path, models)
    outside = save(pair['lr'], tmp_path / 'private' / 'secret.png')
    link = runner.upload_dir / 'u9' / 'innocent.png'
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    ref = upload(runner, 'ref.png', pair['ref'])
    with pytest.raises(JobError, match='was not uploaded through this page'):
        runner.run(JobRequest(lr=str(link), refs=[ref]))
    lr = upload(runner, '..%2F..%2Fevil.png', pair['lr'])  # the page may pass any name: it is only shown
    before = files_under(tmp_path)
    result = runner.run(JobRequest(lr=lr, refs=[ref], lr_name='../../evil.png'))
    new = files_under(tmp_path) - before
    assert new == set(result.files.values())
    assert all(p.parent == runner.jobs_dir / result.job_id for p in new)  # nothing outside the job's folder
    assert sorted(p.name for p in new) == sorted([f'{result.job_id}_bicubic.png', 'evil_x4.png'] +
                                                 [f'{result.job_id}_texture_{i}.png' for i in (1, 2, 3)])
    again = runner.run(JobRequest(lr=lr, refs=[ref]))  # a second job never replaces the first one's files
    assert again.job_id != result.job_id and all(p.is_file() for p in result.files.values())


def test_one_job_at_a_time_and_the_queue_says_so(models, pair, tmp_path):
    runner = make_runner(tmp_path, models, max_waiting=1)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    hold, started = threading.Event(), threading.Event()
    log = []

    def first_report(p):
        log.append(('A', p.stage))
        if p.stage == 'reading the photos':
            started.set()
            assert hold.wait(60)

    results = {}

    def job(name, report):
        try:
            results[name] = runner.run(JobRequest(lr=lr, refs=[ref]), report)
        except JobError as err:  # pragma: no cover - reported by the asserts below
            results[name] = err

    a = threading.Thread(target=job, args=('A', first_report))
    a.start()
    assert started.wait(60)
    queued = threading.Event()

    def second_report(p):
        log.append(('B', p.stage))
        if p.stage.startswith('queued'):
            queued.set()

    b = threading.Thread(target=job, args=('B', second_report))
    b.start()
    assert queued.wait(30)
    assert runner.busy and runner.waiting == 1
    with pytest.raises(JobError, match='The page is busy: 1 jobs are already waiting'):
        runner.run(JobRequest(lr=lr, refs=[ref]))  # max_waiting=1: a third is refused at once
    time.sleep(0.3)
    assert ('B', 'reading the photos') not in log  # B waits while A holds the slot
    hold.set()
    a.join(120)
    b.join(120)
    assert not isinstance(results['A'], Exception) and not isinstance(results['B'], Exception)
    b_msgs = [s for who, s in log if who == 'B']
    assert b_msgs[0] == 'queued: 1 job(s) ahead of yours; it starts when they finish'
    assert log.index(('A', 'done')) < log.index(('B', 'reading the photos'))
    assert not runner.busy and runner.waiting == 0


def test_single_image_model_without_references(pair, tmp_path):
    """No reference: the single-image model (DRCT) from the list, through run_sisr."""
    import torch
    import yaml

    from extracter.inference.network import NetworkLoadError, load_network
    from extracter.registry import ARCH_REGISTRY

    folder = tmp_path / 'models'
    tiny_checkpoint(folder / 'refsr')
    drct_opt = dict(type='DRCT', upscale=4, in_chans=3, img_size=16, window_size=8, embed_dim=12, depths=[1],
                    num_heads=[2], mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')
    opt = dict(drct_opt)
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    torch.save({'params': net.state_dict()}, folder / 'drct.pth')
    (folder / 'drct.yml').write_text(yaml.safe_dump({'network_g': drct_opt}))
    try:
        load_network(str(folder / 'drct.pth'))
    except NetworkLoadError as err:
        pytest.skip(f'load_network cannot load DRCT checkpoints yet: {err}')
    runner = JobRunner(tmp_path / 'app', models=find_models(folder), max_memory=BUDGET)
    lr = upload(runner, 'lr.png', pair['lr'])
    refsr = str(folder / 'refsr' / 'tiny.pth')
    result = runner.run(JobRequest(lr=lr, model=refsr))  # the page sends the chosen RefSR model, and no reference
    assert result.single_image and result.sr.shape == (96, 96, 3) and result.relevance is None
    assert result.notes == ['No reference photo was given: used the single-image model drct.pth.']
    np.testing.assert_array_equal(read_png(result.files['sr']), runner.run(JobRequest(lr=lr)).sr)
    assert os.path.isfile(result.files['sr'])
    # without its YAML the DRCT checkpoint is still offered (its network is read off the weights, as infer.py does)
    (folder / 'drct.yml').unlink()
    found = {m.label: (m.arch, m.uses_reference) for m in find_models(folder)}
    assert found == {'refsr/tiny.pth': ('Extracter', True), 'drct.pth': ('DRCT', False)}
    runner = JobRunner(tmp_path / 'app2', models=find_models(folder), max_memory=BUDGET)
    lr = upload(runner, 'lr.png', pair['lr'])
    np.testing.assert_array_equal(runner.run(JobRequest(lr=lr)).sr, result.sr)


def test_the_page_listens_on_this_machine_only_unless_asked(capsys):
    from extracter.app.cli import check_host, main

    assert check_host('127.0.0.1', False) == '127.0.0.1' and check_host('::1', False) == '::1'
    for host in ('0.0.0.0', '192.168.1.5', 'example.org'):
        assert main(['--host', host]) == 2  # a usage error: exit 2 and one line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.match(f'error: --host {host} is not a loopback address; .* pass --listen-all',
                                          err[0])
    assert check_host('127.0.0.1', True) == '0.0.0.0' and check_host('10.0.0.2', True) == '10.0.0.2'
    assert main(['--listen-all', '--max-upload', 'lots']) == 2
    err = capsys.readouterr().err
    assert 'WARNING: --listen-all: the page listens on every network interface' in err
    assert err.strip().splitlines()[-1].startswith('error: --max-upload must look like 200M')


def test_the_same_reference_twice_is_used_once(models, pair, tmp_path, one_thread):
    """The same photo uploaded twice (two files, the same pixels): exactly the SR of one, and a note says so."""
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'walk10_lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    again = upload(runner, 'ref copy.png', pair['ref'])
    once = runner.run(JobRequest(lr=lr, refs=[ref]))
    twice = runner.run(JobRequest(lr=lr, refs=[ref, again]))
    np.testing.assert_array_equal(twice.sr, once.sr)
    np.testing.assert_array_equal(read_png(twice.files['sr']), read_png(once.files['sr']))
    assert twice.notes == ['Reference 2 (ref copy.png) is the same photo as reference 1 (ref.png): used once.']
    assert once.notes == []


def test_the_result_is_named_after_the_photo(models, pair, tmp_path, one_thread):
    from extracter.app.jobs import download_stem

    runner = make_runner(tmp_path, models)
    ref = upload(runner, 'ref.png', pair['ref'])
    lr = upload(runner, 'walk10_lr.png', pair['lr'])
    first = runner.run(JobRequest(lr=lr, refs=[ref]))
    second = runner.run(JobRequest(lr=lr, refs=[ref]))
    assert first.files['sr'].name == second.files['sr'].name == 'walk10_lr_x4.png'
    assert first.files['sr'].parent != second.files['sr'].parent  # each job keeps its own folder
    assert first.files['sr'].parent == first.folder and first.files['sr'].is_file()
    odd = upload(runner, 'été à la plage (1).PNG', pair['lr'])
    assert runner.run(JobRequest(lr=odd, refs=[ref], lr_name='../../été à la plage (1).PNG')).files['sr'].name \
        == 't_la_plage_1_x4.png'
    assert download_stem('..\\..\\.hidden.png') == 'hidden' and download_stem('') == 'photo'
    assert download_stem('a' * 100 + '.jpg') == 'a' * 60 and download_stem('$$$.png') == 'photo'


def job_folders(runner: JobRunner) -> list:
    return sorted(p.name for p in runner.jobs_dir.iterdir())


def test_old_jobs_are_removed_keeping_the_last_n_under_the_cap(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path / 'count', models, keep_jobs=3)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    ids = [runner.run(JobRequest(lr=lr, refs=[ref])).job_id for _ in range(5)]
    assert job_folders(runner) == sorted(ids[-3:])  # the newest three
    folder_bytes = sum(p.stat().st_size for p in (runner.jobs_dir / ids[-1]).iterdir())
    # at most 2.5 folders' worth of megabytes: two remain, however many are allowed by count
    capped = make_runner(tmp_path / 'cap', models, keep_jobs=10, keep_mb=2.5 * folder_bytes / 2 ** 20)
    lr, ref = upload(capped, 'lr.png', pair['lr']), upload(capped, 'ref.png', pair['ref'])
    ids = [capped.run(JobRequest(lr=lr, refs=[ref])).job_id for _ in range(4)]
    assert job_folders(capped) == sorted(ids[-2:])
    assert sum(p.stat().st_size for p in files_under(capped.jobs_dir)) <= capped.keep_bytes
    # a cap below one job's size: the job that just ran is kept anyway, whole
    tiny = make_runner(tmp_path / 'tiny', models, keep_mb=1e-6)
    lr, ref = upload(tiny, 'lr.png', pair['lr']), upload(tiny, 'ref.png', pair['ref'])
    for _ in range(2):
        result = tiny.run(JobRequest(lr=lr, refs=[ref]))
        assert job_folders(tiny) == [result.job_id] and all(p.is_file() for p in result.files.values())
    with pytest.raises(ValueError, match='keep_jobs must be at least 1'):
        make_runner(tmp_path / 'bad', models, keep_jobs=0)


def test_uploads_older_than_the_jobs_kept_are_removed(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models, keep_jobs=1)
    old = Path(upload(runner, 'old.png', pair['lr']))
    outside = tmp_path / 'outside.png'
    outside.write_bytes(b'not the page\'s')
    os.symlink(outside, runner.upload_dir / 'link')
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    past = time.time() - 2 * 3600
    for p in (old, old.parent, Path(lr), Path(lr).parent, Path(ref), Path(ref).parent):
        os.utime(p, (past, past))
    os.utime(runner.upload_dir / 'link', (past, past), follow_symlinks=False)
    result = runner.run(JobRequest(lr=lr, refs=[ref]))
    assert not old.parent.exists()  # older than every job kept (and an hour), and not this job's
    fresh = Path(upload(runner, 'fresh.png', pair['lr']))  # older than the job kept, but a minute old: kept
    os.utime(fresh.parent, (time.time() - 60,) * 2)
    runner.run(JobRequest(lr=lr, refs=[ref]))
    assert fresh.is_file()
    assert Path(lr).is_file() and Path(ref).is_file()  # the job's own inputs stay (a rerun may use them)
    assert not (runner.upload_dir / 'link').is_symlink() and outside.read_bytes() == b'not the page\'s'
    assert len(job_folders(runner)) == 1 and result.job_id not in job_folders(runner)


def test_the_retention_flags_are_checked(capsys):
    from extracter.app import cli, jobs

    assert (cli.DEFAULT_KEEP_JOBS, cli.DEFAULT_KEEP_MB) == (jobs.DEFAULT_KEEP_JOBS, jobs.DEFAULT_KEEP_MB)
    args = cli.build_parser().parse_args(['--keep-jobs', '5', '--keep-mb', '50'])
    assert (args.keep_jobs, args.keep_mb) == (5, 50.0)
    for argv in (['--keep-jobs', '0'], ['--keep-mb', '0']):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err.strip().startswith('error: --keep-jobs must be at least 1 and --keep-mb')
    assert cli.main(['--max-waiting', '-1']) == 2  # Gradio would get a concurrency limit of 0
    assert capsys.readouterr().err.strip() == 'error: --max-waiting must be 0 or more (0: no job waits), got -1'


def test_time_left_comes_from_the_work_and_the_measured_speed(models, pair, tmp_path, one_thread):
    """The first job is calibrated by its own first stage; afterwards each stage's rate is this model's, per kind of
    work, so a job with more work (a larger photo, three references) is estimated longer, never at the last job's
    speed per pixel."""
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    big_lr = upload(runner, 'big.png', motorcycle_pair(320)['lr'])  # 80 x 80: 11 times the pixels of 24 x 24
    refs = [upload(runner, f'ref{i}.png', pair['ref'][:, i:]) for i in range(3)]  # three different pictures
    assert runner.estimate_seconds(JobRequest(lr=lr, refs=refs[:1])) is None  # no model loaded, nothing measured
    first = []
    runner.run(JobRequest(lr=lr, refs=refs[:1]), first.append)
    # the first job: no estimate before its first stage (the calibration) is measured, one from then on
    assert first[2].stage == 'encoding the reference 1/1' and first[2].eta_s is None
    assert any(p.stage == 'search' and p.eta_s is not None for p in first)
    weights = str(models / 'refsr' / 'tiny.pth')
    assert {kind for (model, kind) in runner.speed.known()} == {'keys', 'search:chunked', 'textures', 'main'}
    assert {model for (model, kind) in runner.speed.known()} == {weights}
    small = runner.estimate_seconds(JobRequest(lr=lr, refs=refs[:1]))
    large = runner.estimate_seconds(JobRequest(lr=big_lr, refs=refs[:1]))
    three = runner.estimate_seconds(JobRequest(lr=lr, refs=refs))
    assert 0 < small < large and small < three
    stages = []
    runner.run(JobRequest(lr=big_lr, refs=refs), stages.append)
    computing = [p for p in stages if p.eta_s is not None]
    assert computing and computing[0].eta_s > 0 and computing[-1].eta_s <= computing[0].eta_s


def test_the_clock_moves_through_an_untiled_stage_and_stops_below_the_end():
    """A stage without tiles advances with the time against its estimate, capped below its end until the next
    stage starts; the seconds left count down; the rates are kept per model and kind."""
    from extracter.app.timing import STAGE_CAP, JobClock, SpeedBook, Stage

    book = SpeedBook()
    book.record('m', 'keys', 100, 1.0)  # 0.01 s per unit
    book.record('m', 'main', 100, 4.0)  # 0.04 s per unit
    book.record('other', 'main', 100, 1.0)
    assert book.rate('m', 'main') == 0.04 and book.rate('other', 'main') == 0.01
    assert book.rate('new', 'main') == 0.025  # a model not measured yet: the mean of the others
    book.record('m', 'main', 100, 2.0)  # refined by each job: half the old rate, half the new measurement
    assert book.rate('m', 'main') == pytest.approx(0.03)
    now = [0.0]
    clock = JobClock(book, 'm', [Stage('encoding the reference 1/1', 'keys', 100), Stage('main network', 'main', 100)],
                     now=lambda: now[0])
    clock.enter_text('encoding reference 1/1')  # the engine's words
    assert clock.seconds_left() == pytest.approx(1 + 3)
    now[0] = 0.5
    assert clock.fraction() == pytest.approx(0.5 / 4) and clock.seconds_left() == pytest.approx(3.5)
    now[0] = 2.0  # slower than estimated: the stage stays below its end; the rest is corrected by the slowdown
    assert clock.fraction() == pytest.approx(STAGE_CAP * 1 / 4)
    clock.enter_text('main network')
    assert clock.seconds_left() == pytest.approx(2 * 3)  # this job runs twice as slow as estimated
    readings = []
    for t in (2.5, 4.0, 6.0, 9.0, 30.0):
        now[0] = t
        readings.append((clock.fraction(), clock.seconds_left()))
    fractions = [f for f, _ in readings]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1] <= STAGE_CAP
    assert [left for _, left in readings] == sorted((left for _, left in readings), reverse=True)
    clock.finish()
    assert clock.fraction() == 1.0 and clock.seconds_left() == 0.0


def held_job(runner, request, stage: str):
    """Run ``request`` in a thread, held at the report of ``stage`` until the returned event is set; returns
    (thread, reached, release, results)."""
    reached, release, results = threading.Event(), threading.Event(), {}

    def report(p):
        if p.stage == stage and not reached.is_set():
            reached.set()
            assert release.wait(60)

    def job():
        try:
            results['result'] = runner.run(request, report)
        except JobError as err:
            results['result'] = err

    thread = threading.Thread(target=job)
    thread.start()
    assert reached.wait(60)
    return thread, release, results


def test_the_queue_says_how_long_the_wait_is(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    runner.run(JobRequest(lr=lr, refs=[ref]))  # this machine's speed, measured
    thread, release, _ = held_job(runner, JobRequest(lr=lr, refs=[ref]), 'search')
    messages, cancel = [], threading.Event()

    def report(p):
        messages.append(p.stage)
        cancel.set()  # seen: leave the queue

    with pytest.raises(JobCancelled):
        runner.run(JobRequest(lr=lr, refs=[ref]), report, cancel)
    release.set()
    thread.join(60)
    assert re.fullmatch(r'queued: 1 job\(s\) ahead of yours; it starts in about \d+ s', messages[0]), messages


def test_cancel_stops_the_job_and_leaves_nothing_behind(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    for stage in ('reading the photos', 'search', 'main network'):
        cancel, seen = threading.Event(), []

        def report(p, stage=stage, cancel=cancel, seen=seen):
            seen.append(p.stage)
            if p.stage == stage:
                cancel.set()  # the Cancel button, pressed while this stage runs

        with pytest.raises(JobCancelled, match='The job was cancelled'):
            runner.run(JobRequest(lr=lr, refs=[ref]), report, cancel)
        assert seen[-1] == stage and 'done' not in seen  # stopped at its next check
        assert not runner.jobs_dir.exists() or not any(runner.jobs_dir.iterdir())  # nothing half-written
        assert not runner.busy and runner.waiting == 0
    # a job waiting in the queue is cancelled too, and the one running goes on
    thread, release, results = held_job(runner, JobRequest(lr=lr, refs=[ref]), 'search')
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        runner.run(JobRequest(lr=lr, refs=[ref]), lambda p: cancel.set(), cancel)
    assert runner.waiting == 0
    release.set()
    thread.join(60)
    assert results['result'].sr.shape == (96, 96, 3)


def test_no_waiting_room_still_runs_a_job_when_idle(models, pair, tmp_path, one_thread):
    """max_waiting=0 (``--max-waiting 0``: no job waits) refuses only a job that would have to wait."""
    runner = make_runner(tmp_path, models, max_waiting=0)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    assert runner.run(JobRequest(lr=lr, refs=[ref])).sr.shape == (96, 96, 3)
    thread, release, results = held_job(runner, JobRequest(lr=lr, refs=[ref]), 'search')
    with pytest.raises(JobError, match='The page is busy'):
        runner.run(JobRequest(lr=lr, refs=[ref]))
    release.set()
    thread.join(60)
    assert results['result'].sr.shape == (96, 96, 3)


def test_a_job_cancelled_before_its_turn_never_starts(models, pair, tmp_path, one_thread):
    """Cancel pressed (or the tab closed) before the job reached the runner (the page: while it waited in Gradio's
    queue): it ends at once, before anything is checked, read or written, even a request that would be refused."""
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    cancel, seen = threading.Event(), []
    cancel.set()
    for request in (JobRequest(lr=lr, refs=[ref]), JobRequest(lr=str(tmp_path / 'elsewhere.png'))):
        with pytest.raises(JobCancelled):
            runner.run(request, seen.append, cancel)
    assert seen == [] and not runner.busy and runner.waiting == 0
    assert not runner.jobs_dir.exists() or not any(runner.jobs_dir.iterdir())


def test_the_examples_are_made_once_and_run(models, tmp_path, one_thread):
    from extracter.app.examples import make_examples

    runner = make_runner(tmp_path, models)
    rows = make_examples(runner.examples_dir)
    assert [Path(r[0]).name for r in rows] == ['motorcycle_crop_lr.png', 'motorcycle_left_lr.png']
    assert read_png(rows[0][0]).shape == (40, 40, 3) and read_png(rows[1][0]).shape == (125, 185, 3)
    assert read_png(rows[1][1][0]).shape == (500, 741, 3)  # the right view, as it ships
    stamp = Path(rows[0][0]).stat().st_mtime_ns
    assert make_examples(runner.examples_dir) == rows and Path(rows[0][0]).stat().st_mtime_ns == stamp
    result = runner.run(JobRequest(lr=rows[0][0], refs=rows[0][1]))  # read from the examples folder
    assert result.sr.shape == (160, 160, 3) and result.files['sr'].name == 'motorcycle_crop_lr_x4.png'


def test_a_huge_picture_is_refused_in_plain_words(models, pair, tmp_path):
    from extracter.data import image_io

    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'huge.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    limit = image_io.get_max_image_pixels()
    image_io.set_max_image_pixels(500)  # as a 20000 x 20000 photo against the default limit
    try:
        with pytest.raises(JobError) as err:
            runner.run(JobRequest(lr=lr, refs=[ref], lr_name='huge.png'))
    finally:
        image_io.set_max_image_pixels(limit)
    message = str(err.value)
    assert message.startswith('The photo to enlarge (huge.png) is 24 x 24 = 576 pixels, more than this page '
                              'accepts (500 pixels'), message
    assert '--max-image-pixels 576' in message and 'extracter.' not in message and str(tmp_path) not in message


def gallery_photos(pair, folder: Path) -> list:
    """The scene's reference among three photos of other scenes, as files in ``folder`` (sorted names)."""
    photos = {'scene.png': pair['ref'], **{f'{n}.png': img for n, img in other_scenes(pair['ref'].shape[:2]).items()}}
    return [save(img, folder / name) for name, img in sorted(photos.items())]


def csv_rows(path: Path) -> list:
    import csv

    with open(path, newline='') as f:
        return [{**row, 'reference': os.path.basename(row['reference'])} for row in csv.DictReader(f)]


DEMO = Path(__file__).resolve().parents[1] / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'


@pytest.mark.parametrize('source', ['uploads', 'folder'])
def test_references_chosen_for_you_equal_infer_gallery(pair, tmp_path, one_thread, monkeypatch, source):
    """With the demo model (trained features: a random network's would not tell the scene from the others)."""
    if not DEMO.is_file():
        pytest.skip(f'the demo model {DEMO} is missing')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    runner = make_runner(tmp_path, DEMO.parent)
    lr = upload(runner, 'lr.png', pair['lr'])
    photos = gallery_photos(pair, tmp_path / 'photos')
    if source == 'uploads':
        request = JobRequest(lr=lr, gallery_files=[upload(runner, p.name, p.read_bytes()) for p in photos],
                             refs_per_image=2)
    else:
        request = JobRequest(lr=lr, gallery_dir=str(tmp_path / 'photos'), refs_per_image=2)
    reports = []
    result = runner.run(request, reports.append)
    stages = [p.stage for p in reports]
    assert [p.fraction for p in reports] == sorted(p.fraction for p in reports)  # the bar never moves back
    cli_out = tmp_path / 'cli'
    infer_run(['--weights', str(DEMO), '--lr', lr, '--gallery', str(tmp_path / 'photos'),
               '--refs-per-image', '2', '-o', str(cli_out), '--max-memory', BUDGET])
    # the same choice (names, ranks, scores) and the same SR as infer.py --gallery
    assert csv_rows(result.files['references']) == csv_rows(cli_out / 'references.csv')
    np.testing.assert_array_equal(read_png(result.files['sr']), read_png(cli_out / 'lr_sr.png'))
    assert result.chosen[0]['name'] == 'scene.png' and 1 <= len(result.chosen) <= 2
    assert all(c['thumb'].parent == result.folder and max(read_png(c['thumb']).shape[:2]) <= 192
               for c in result.chosen)
    assert 'choosing the references' in stages and stages.index('choosing the references') < stages.index(
        'encoding the reference 1/2' if len(result.chosen) == 2 else 'encoding the reference 1/1')
    if source == 'uploads':  # the index of an uploaded set lives in the page's own folder, reused by the same set
        assert len(list(runner.upload_dir.glob('gallery-*/index.npz'))) == 1
        assert len(list((tmp_path / 'cache').rglob('*.npz'))) == 1  # infer.py's own, for its folder
        again = runner.run(request)  # the same set again: its index reused, the same choice
        assert [c['name'] for c in again.chosen] == [c['name'] for c in result.chosen]
    else:  # a named folder's index: in the user's cache, as infer.py keeps it (shared with its run)
        assert len(list((tmp_path / 'cache').rglob('*.npz'))) == 1
        assert not (tmp_path / 'photos' / 'index.npz').exists()


def test_the_choice_is_checked_and_can_be_cancelled(models, pair, tmp_path, one_thread):
    runner = make_runner(tmp_path, models)
    lr = upload(runner, 'lr.png', pair['lr'])
    ref = upload(runner, 'ref.png', pair['ref'])
    photo = save(pair['ref'], tmp_path / 'photos' / 'scene.png')
    for request, message in [
        (JobRequest(lr=lr, gallery_dir=str(tmp_path / 'nowhere')), 'The folder .*nowhere does not exist'),
        (JobRequest(lr=lr, gallery_dir=str(photo)), 'is a file, not a folder'),
        (JobRequest(lr=lr, refs=[ref], gallery_dir=str(photo.parent)), 'either reference photos or'),
        (JobRequest(lr=lr, gallery_dir=str(photo.parent), refs_per_image=0), 'at least 1'),
        (JobRequest(lr=lr, gallery_files=[str(photo)]), 'was not uploaded through this page'),
    ]:
        with pytest.raises(JobError, match=message):
            runner.run(request)
    closed = make_runner(tmp_path / 'all', models, allow_model_paths=False)  # --listen-all: no server folders
    with pytest.raises(JobError, match='does not read folders of the server'):
        closed.run(JobRequest(lr=upload(closed, 'lr.png', pair['lr']), gallery_dir=str(photo.parent)))
    cancel, seen = threading.Event(), []

    def report(p):
        seen.append(p.stage)
        if p.stage == 'choosing the references':
            cancel.set()

    with pytest.raises(JobCancelled):
        runner.run(JobRequest(lr=lr, gallery_dir=str(photo.parent)), report, cancel)
    assert 'encoding the reference 1/1' not in seen and not runner.busy
    assert not runner.jobs_dir.exists() or not any(runner.jobs_dir.iterdir())


def test_the_result_view_links_its_file_whatever_the_folder_is_named():
    """The 1:1 view's picture is fetched by URL: a folder named with '#', '?', '%' or spaces must not cut it short."""
    import html
    from urllib.parse import unquote, urlsplit

    from extracter.app.page import result_html

    path = '/srv/my results #2/50% done?/jobs/abc/walk10_lr_x4.png'
    page = result_html(path, 160, 120)
    src = html.unescape(re.search(r'src="([^"]*)"', page).group(1))
    url = urlsplit(src)  # as a browser splits it: nothing may end up in the query or the fragment
    assert url.query == '' and url.fragment == '' and unquote(url.path) == f'/gradio_api/file={path}'
    assert 'width:160px;height:120px' in page and 'pixelated' in page  # 1:1, never stretched
