"""The web page as a person uses it: ``extracter-app`` started as a process, driven in Debian's headless chromium by
Playwright (no browser download: ``executable_path``). Upload the motorcycle pair, run, download the PNG: its size
is 4x the LR and its PSNR against the ground truth equals the command line's for the same inputs; the result is
shown at 1:1 with a zoom; three references give readable texture panels; a broken file and a huge one are answered
in a red box in plain words; a long job shows one progress display that moves with the time left, a second tab's
job says how long it waits, closing the first tab ends its job so the second does not wait behind it, and Cancel
stops a job, even one still waiting in Gradio's own queue; given four photos to choose from (or their folder), the
page chooses the scene's one and shows it with its score, as infer.py --gallery chooses. Every wait is for a state
of the page, never a fixed sleep. Screenshots go to results/app_tests/ (ignored by git).

Skips when gradio, playwright or chromium is missing, unless EXTRACTER_APP_TESTS=required (then it fails).
"""

import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

from extracter.infer import run as infer_run
from tests.app_helpers import CHROMIUM, motorcycle_pair, psnr_y, read_png, require_app_extras, save

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'
SCREENSHOTS = Path(os.environ.get('EXTRACTER_SCREENSHOTS', REPO / 'results' / 'app_tests'))
BUDGET = '2G'
START_TIMEOUT_S = float(os.environ.get('EXTRACTER_APP_START_TIMEOUT', 300))
JOB_TIMEOUT_MS = int(float(os.environ.get('EXTRACTER_APP_JOB_TIMEOUT', 600)) * 1000)  # an upload, or a job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextmanager
def app_process(out: Path, *extra: str):
    """``python -m extracter.app`` on a free port with the demo model, output in ``out``; yields its address."""
    require_app_extras()
    if not DEMO_MODEL.is_file():
        pytest.skip(f'the demo model {DEMO_MODEL} is missing')
    port = free_port()
    log = open(out / 'server.log', 'w')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, '-m', 'extracter.app', '--port', str(port), '-o', str(out / 'page'),
                             '--models', str(DEMO_MODEL.parent), '--max-memory', BUDGET, *extra],
                            cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f'the app did not start: {(out / "server.log").read_text()[-2000:]}')
        time.sleep(1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """The app (:func:`app_process`); yields (url, its output folder)."""
    out = tmp_path_factory.mktemp('app')
    with app_process(out) as url:
        yield url, out


@pytest.fixture(scope='module')
def browser():
    require_app_extras()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox'])
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={'width': 1400, 'height': 1100}, accept_downloads=True)
    page.goto(url)
    page.locator('#run').wait_for(timeout=JOB_TIMEOUT_MS)
    return page


def upload(page, elem_id: str, paths, attempts: int = 3) -> None:
    """Choose the files in the component's file input; the upload has finished when the component shows a thumbnail
    of each (the photo box one, the reference gallery one per file). On a busy machine the page may not have
    attached its handlers yet when the first choice is made: choose again, but only while the component shows no
    thumbnail (choosing again after an upload started would add a second copy to the gallery)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    box = page.locator(f'#{elem_id}')
    thumbnails = box.locator('img')
    for attempt in range(1, attempts + 1):
        if attempt == 1 or not thumbnails.count():
            box.locator('input[type=file]').first.set_input_files([str(p) for p in paths])
        try:
            expect(thumbnails).to_have_count(len(paths), timeout=JOB_TIMEOUT_MS // attempts)
            return
        except AssertionError:
            if attempt == attempts or thumbnails.count():
                raise
        except PlaywrightTimeout:
            if attempt == attempts:
                raise


def run_and_wait(page, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    from playwright.sync_api import expect

    page.locator('#run').click()
    status = page.locator('#status')
    expect(status.locator('.status')).to_contain_text(re.compile('Done|Could not|Cancelled'), timeout=timeout_ms)
    return status.inner_text()


def progress_bar(page):
    """The progress bar of the status box (its aria-label: the stage and the time left; aria-valuenow: percent)."""
    return page.locator('#status [role=progressbar]')


def enlarge_on_the_page(browser, url, tmp_path, pair, shot: str, timeout_ms: int = JOB_TIMEOUT_MS):
    """Upload the pair, run, download the PNG; returns (the downloaded SR, the CLI's SR)."""
    lr = save(pair['lr'], tmp_path / 'in' / 'motorcycle_lr.png')
    ref = save(pair['ref'], tmp_path / 'in' / 'motorcycle_ref.png')
    page = open_page(browser, url)
    from playwright.sync_api import expect

    expect(page.locator('#texture')).to_be_hidden()  # no empty texture box before there is a texture picture
    upload(page, 'lr', [lr])
    upload(page, 'refs', [ref])
    text = run_and_wait(page, timeout_ms)
    assert 'Done.' in text and 'Could not' not in text, text
    assert page.locator('#slider img').count() == 2  # bicubic | SR
    expect(page.locator('#texture img')).to_have_count(3)  # relevance, source position, reference 1
    # the technical text (search, memory plan) is in a collapsed section, opened on a click
    expect(page.locator('#stats')).to_be_hidden()
    assert 'multiply-adds' not in page.locator('#summary').inner_text()
    page.locator('#details').get_by_text('Technical details').click()
    expect(page.locator('#stats')).to_contain_text('Memory plan')
    stats = page.locator('#stats').inner_text()
    assert re.search(r'Relevance of the best reference match.*mean 0\.\d{3}', stats), stats
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)
    with page.expect_download() as download:
        page.locator('#download a').first.click()
    assert download.value.suggested_filename == 'motorcycle_lr_x4.png'  # named after the upload
    got = tmp_path / 'downloaded.png'
    download.value.save_as(str(got))
    page.close()
    cli = tmp_path / 'cli'
    infer_run(['--weights', str(DEMO_MODEL), '--lr', str(lr), '--ref', str(ref), '-o', str(cli),
               '--max-memory', BUDGET])
    return read_png(got), read_png(cli / 'motorcycle_lr_sr.png')


def shown_size(page):
    """The result's (natural width, width on the page, height on the page) in the 1:1 view."""
    from playwright.sync_api import expect

    img = page.locator('#result-img')
    expect(img).to_be_visible()
    img.evaluate('e => e.decode()')  # loaded
    return tuple(img.evaluate('e => [e.naturalWidth, e.getBoundingClientRect().width, '
                              'e.getBoundingClientRect().height]'))


def test_page_enlarges_the_motorcycle_pair_as_the_command_line_does(server, browser, tmp_path):
    url, out = server
    pair = motorcycle_pair(160, ref_scale=0.5)  # LR 40 x 40, reference 370 x 250: fast on 2 cores
    sr, cli_sr = enlarge_on_the_page(browser, url, tmp_path, pair, 'result_small.png')
    assert sr.shape == (160, 160, 3) == pair['hr'].shape
    # each result is stored once: served from its job folder, not copied into Gradio's cache (the upload folder)
    uploads = {p.name for p in (out / 'page' / 'uploads').rglob('*.png')}
    assert uploads == {'motorcycle_lr.png', 'motorcycle_ref.png'}, uploads
    assert psnr_y(sr, pair['hr']) == psnr_y(cli_sr, pair['hr'])


def test_page_says_what_is_wrong_with_a_broken_file(server, browser, tmp_path):
    url, out = server
    broken = tmp_path / 'holiday.png'
    broken.write_bytes(b'this is not a picture, only text')
    ref = save(motorcycle_pair(160, ref_scale=0.5)['ref'], tmp_path / 'ref.png')
    page = open_page(browser, url)
    upload(page, 'lr', [broken])
    upload(page, 'refs', [ref])
    text = run_and_wait(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'broken_file.png'), full_page=True)
    assert 'Could not enlarge the photo: The photo to enlarge (holiday.png): not an image' in text, text
    assert str(out) not in text  # no server paths on the page
    error = page.locator('#status .status-error')  # styled as an error: a red box
    assert error.evaluate('e => getComputedStyle(e).borderColor') == 'rgb(220, 38, 38)'
    page.close()


def huge_png(path: Path, side: int = 20000) -> Path:
    """A small file whose PNG header claims a ``side`` x ``side`` picture (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)) +
                     chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + chunk(b'IEND', b''))
    return path


def test_page_refuses_a_huge_picture_in_plain_words(server, browser, tmp_path):
    url, _ = server
    ref = save(motorcycle_pair(160, ref_scale=0.5)['ref'], tmp_path / 'ref.png')
    page = open_page(browser, url)
    upload(page, 'lr', [huge_png(tmp_path / 'poster.png')])
    upload(page, 'refs', [ref])
    text = run_and_wait(page)
    assert 'The photo to enlarge (poster.png) is 400,000,000 pixels, more than this page accepts' in text, text
    assert '--max-image-pixels 400000000' in text and 'extracter.' not in text and 'set_max_image' not in text
    expect_error = page.locator('#status .status-error')
    assert expect_error.count() == 1
    page.close()


def test_page_inputs_results_at_one_to_one_and_three_references(server, browser, tmp_path):
    """Thumbnails for the photo and each reference, paste offered, the model by its short name with its details,
    the checkpoint path in the settings; the result at 1:1 (not stretched) with a zoom; the five texture panels of
    three references each shown large enough to read."""
    from playwright.sync_api import expect

    url, _ = server
    pair = motorcycle_pair(160, ref_scale=0.5)
    lr = save(pair['lr'], tmp_path / 'walk_lr.png')
    refs = [save(pair['ref'][:, 40 * i:], tmp_path / f'ref{i}.png') for i in range(3)]  # three different pictures
    page = open_page(browser, url)
    assert page.locator('#model input').input_value() == DEMO_MODEL.stem  # the short name
    assert 'Extracter, uses the reference photos' in page.locator('#model').inner_text()  # the details
    expect(page.locator('#model_path')).to_be_hidden()  # in the closed settings
    page.locator('#settings').get_by_text('Settings').click()
    expect(page.locator('#settings #model_path')).to_be_visible()
    assert page.locator('#lr [aria-label="Paste from clipboard"]').count() == 1
    upload(page, 'lr', [lr])
    upload(page, 'refs', refs)  # three thumbnails
    text = run_and_wait(page)
    assert 'Done.' in text, text
    natural, width, height = shown_size(page)
    assert natural == 160 and (width, height) == (160, 160)  # 1:1: its own pixels, not stretched to the box
    page.locator('#zoom').get_by_text('2x').click()
    expect(page.locator('#result-img')).to_have_attribute('data-zoom', '2x')
    assert shown_size(page)[1:] == (320, 320)
    panels = page.locator('#texture img')
    expect(panels).to_have_count(5)  # relevance, source position, one per reference
    widths = panels.evaluate_all('imgs => imgs.map(i => i.getBoundingClientRect().width)')
    assert min(widths) >= 250, widths  # two to a row, not five in one strip
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'three_references.png'), full_page=True)
    page.close()


def server_log(out: Path) -> str:
    return (out / 'server.log').read_text()


def test_time_left_queue_closed_tab_and_cancel(server, browser, tmp_path):
    """A long job (the whole-view example): one progress display, on the status box, moving with the time left
    while the engine is silent; a second tab's job says how long it waits; closing the first tab ends its job
    (nothing kept) and the second runs at once; Cancel stops a job."""
    from playwright.sync_api import expect

    url, out = server
    jobs = out / 'page' / 'jobs'
    before = set(jobs.iterdir()) if jobs.is_dir() else set()
    cancelled_before = server_log(out).count('a job was cancelled')
    first = open_page(browser, url)
    choose_whole_view_example(first)
    first.locator('#run').click()
    progress = progress_bar(first)
    expect(progress).to_have_attribute('aria-label', re.compile(r'^search \(about \d+ s left\)$'),
                                       timeout=JOB_TIMEOUT_MS)
    shown = progress.get_attribute('aria-valuenow')
    # it moves while the search runs (the engine reports nothing until the search ends): the timer's reports
    first.wait_for_function('''shown => { const bar = document.querySelector('#status [role=progressbar]');
        return bar && bar.getAttribute('aria-label').startsWith('search ') &&
               bar.getAttribute('aria-valuenow') !== shown; }''', arg=shown, timeout=JOB_TIMEOUT_MS)
    assert first.locator('[role=progressbar]').count() == 1  # one progress display, not one per output box
    assert 'Ready.' not in first.locator('#status').inner_text()  # the greyed text does not stay under it
    second = open_page(browser, url)
    pair = motorcycle_pair(160, ref_scale=0.5)
    upload(second, 'lr', [save(pair['lr'], tmp_path / 'small_lr.png')])
    upload(second, 'refs', [save(pair['ref'], tmp_path / 'small_ref.png')])
    second.locator('#run').click()
    expect(progress_bar(second)).to_have_attribute(
        'aria-label', re.compile(r'^queued: 1 job\(s\) ahead of yours; it starts in about \d+'),
        timeout=JOB_TIMEOUT_MS)
    first.close()  # the first tab is closed during its job: its job ends, the second's starts
    text = run_and_wait_started(second)
    assert 'Done.' in text, text
    assert server_log(out).count('a job was cancelled') == cancelled_before + 1
    new = set(jobs.iterdir()) - before
    assert [p.name for p in new for p in p.iterdir() if p.name.endswith('_x4.png')] == ['small_lr_x4.png']
    # Cancel: the whole view again, stopped while it runs; nothing kept
    choose_whole_view_example(second)
    second.locator('#run').click()
    expect(progress_bar(second)).to_have_attribute('aria-label', re.compile('left'), timeout=JOB_TIMEOUT_MS)
    second.locator('#cancel').click()
    expect(second.locator('#status .status-cancelled')).to_contain_text('Cancelled.', timeout=JOB_TIMEOUT_MS)
    assert set(jobs.iterdir()) - before == new
    assert server_log(out).count('a job was cancelled') == cancelled_before + 2
    second.close()


def test_cancel_reaches_a_job_still_in_gradios_queue(browser, tmp_path):
    """With no room in the runner's queue (--max-waiting 0) a second tab's job waits in Gradio's own queue, before
    the job function has started: its Cancel still stops it (it ends as it starts, nothing kept) and the first
    job is not disturbed."""
    from playwright.sync_api import expect

    with app_process(tmp_path, '--max-waiting', '0') as url:
        jobs = tmp_path / 'page' / 'jobs'
        first = open_page(browser, url)
        choose_whole_view_example(first)
        first.locator('#run').click()
        expect(progress_bar(first)).to_have_attribute('aria-label', re.compile('left'), timeout=JOB_TIMEOUT_MS)
        second = open_page(browser, url)
        pair = motorcycle_pair(160, ref_scale=0.5)
        upload(second, 'lr', [save(pair['lr'], tmp_path / 'small_lr.png')])
        upload(second, 'refs', [save(pair['ref'], tmp_path / 'small_ref.png')])
        second.locator('#run').click()
        expect(second.locator('#status')).to_contain_text(re.compile('queue', re.I), timeout=JOB_TIMEOUT_MS)
        second.locator('#cancel').click()
        assert 'Done.' in run_and_wait_started(first)
        text = run_and_wait_started(second)
        assert 'Cancelled.' in text, text
        assert [p.name for d in jobs.iterdir() for p in d.iterdir() if p.name.endswith('_x4.png')] == [
            'motorcycle_left_lr_x4.png']  # the first job's; nothing of the cancelled one
        first.close()
        second.close()


def choose_whole_view_example(page) -> None:
    """Click the example of the whole motorcycle view: it fills the photo and the reference (shown as
    thumbnails)."""
    from playwright.sync_api import expect

    page.locator('#examples button', has_text='whole view').click()
    expect(page.locator('#lr img')).to_have_attribute('src', re.compile('motorcycle_left_lr'))
    expect(page.locator('#refs img')).to_have_count(1)
    expect(page.locator('#refs img')).to_have_attribute('src', re.compile('motorcycle_right'))


def run_and_wait_started(page, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    """Wait for the end of a job already started."""
    from playwright.sync_api import expect

    expect(page.locator('#status .status')).to_contain_text(re.compile('Done|Could not|Cancelled'),
                                                            timeout=timeout_ms)
    return page.locator('#status').inner_text()


@pytest.mark.slow
def test_page_full_size_motorcycle_pair(server, browser, tmp_path):
    """The whole left view (740 x 500) as HR, LR 185 x 125, the full right view as reference."""
    url, _ = server
    pair = motorcycle_pair(None)
    sr, cli_sr = enlarge_on_the_page(browser, url, tmp_path, pair, 'result_full.png', 4 * JOB_TIMEOUT_MS)
    assert sr.shape == pair['hr'].shape
    assert psnr_y(sr, pair['hr']) == psnr_y(cli_sr, pair['hr'])


def test_the_page_takes_the_next_free_port_and_prints_its_own_address(tmp_path):
    """``make app`` while 7860 is taken: the next free port, said so, and the page's address printed; never
    Gradio's banner suggesting a public link (share=True: this page is local by design)."""
    require_app_extras()
    if not DEMO_MODEL.is_file():
        pytest.skip(f'the demo model {DEMO_MODEL} is missing')
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
        log_path = tmp_path / 'server.log'
        with open(log_path, 'w') as log:
            proc = subprocess.Popen([sys.executable, '-m', 'extracter.app', '--port', str(port), '-o',
                                     str(tmp_path / 'page'), '--models', str(DEMO_MODEL.parent)],
                                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + START_TIMEOUT_S
                while 'the page is at' not in log_path.read_text():
                    assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-2000:]
                    time.sleep(0.5)
                text = log_path.read_text()
                url = re.search(r'the page is at (http://127\.0\.0\.1:(\d+)/) \(this machine only\)', text)
                assert url and int(url.group(2)) != port and f'port {port} is in use; using {url.group(2)}' in text
                with urllib.request.urlopen(url.group(1), timeout=10) as resp:
                    assert resp.status == 200
                assert 'share=True' not in text and 'public link' not in text
            finally:
                proc.terminate()
                proc.wait(30)



def test_page_chooses_the_references_for_you(server, browser, tmp_path, monkeypatch):
    """Four photos given to choose from, one of them the scene's: it is chosen and shown (thumbnail, name, score),
    and the page's choice and SR equal infer.py --gallery's on the same inputs."""
    from playwright.sync_api import expect

    from tests.app_helpers import other_scenes

    url, out = server
    pair = motorcycle_pair(160, ref_scale=0.5)  # LR 40 x 40, reference 370 x 250
    lr = save(pair['lr'], tmp_path / 'in' / 'motorcycle_lr.png')
    photos = {'scene.png': pair['ref'], **{f'{n}.png': img for n, img in other_scenes(pair['ref'].shape[:2]).items()}}
    paths = [save(img, tmp_path / 'photos' / name) for name, img in sorted(photos.items())]
    page = open_page(browser, url)
    upload(page, 'lr', [lr])
    page.locator('#choose').get_by_text('Choose the references for me').click()
    box = page.locator('#gallery_files')
    box.locator('input[type=file]').first.set_input_files([str(p) for p in paths])
    expect(box.locator('tbody tr')).to_have_count(len(paths), timeout=JOB_TIMEOUT_MS)
    page.locator('#refs_per_image input').fill('1')
    text = run_and_wait(page)
    assert 'Done.' in text, text
    expect(page.locator('#chosen img')).to_have_count(1)
    expect(page.locator('#chosen')).to_contain_text(re.compile(r'1\. scene\.png: score 0\.\d{3}'))
    expect(page.locator('#summary')).to_contain_text('References chosen for you: scene.png')
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'gallery_chosen.png'), full_page=True)
    with page.expect_download() as download:
        page.locator('#download a').first.click()
    got = tmp_path / 'downloaded.png'
    download.value.save_as(str(got))
    page.close()
    cli = tmp_path / 'cli'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # infer.py's index: not in the user's cache
    infer_run(['--weights', str(DEMO_MODEL), '--lr', str(lr), '--gallery', str(tmp_path / 'photos'),
               '--refs-per-image', '1', '-o', str(cli), '--max-memory', BUDGET])
    assert (cli / 'references.csv').read_text().splitlines()[1].split(',')[2].endswith('scene.png')
    assert (read_png(got) == read_png(cli / 'motorcycle_lr_sr.png')).all()
    # a folder of this machine named on the page: a path that is not a folder is refused in plain words
    page = open_page(browser, url)
    upload(page, 'lr', [lr])
    page.locator('#choose').get_by_text('Choose the references for me').click()
    page.locator('#gallery_dir textarea, #gallery_dir input').first.fill(str(paths[0]))
    text = run_and_wait(page)
    assert 'Could not enlarge the photo:' in text and 'is a file, not a folder: give a folder of photos' in text, text
    page.locator('#gallery_dir textarea, #gallery_dir input').first.fill(str(tmp_path / 'photos'))
    page.locator('#run').click()
    expect(page.locator('#status')).not_to_contain_text('is a file', timeout=JOB_TIMEOUT_MS)  # the new job began
    text = run_and_wait_started(page)
    assert 'Done.' in text, text
    expect(page.locator('#chosen')).to_contain_text(re.compile(r'1\. scene\.png: score'))
    page.close()
