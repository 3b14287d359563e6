"""The web page as a person uses it: ``extracter-app`` started as a process, driven in Debian's headless chromium by
Playwright (no browser download: ``executable_path``). Upload the motorcycle pair, run, download the PNG: its size
is 4x the LR and its PSNR against the ground truth equals the command line's for the same inputs; a broken file is
answered on the page in plain words. Screenshots go to results/app_tests/ (ignored by git).

Skips when gradio, playwright or chromium is missing, unless EXTRACTER_APP_TESTS=required (then it fails).
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
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


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """``python -m extracter.app`` on a free port with the demo model; yields (url, its output folder)."""
    require_app_extras()
    if not DEMO_MODEL.is_file():
        pytest.skip(f'the demo model {DEMO_MODEL} is missing')
    out = tmp_path_factory.mktemp('app')
    port = free_port()
    log = open(out / 'server.log', 'w')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, '-m', 'extracter.app', '--port', str(port), '-o', str(out / 'page'),
                             '--models', str(DEMO_MODEL.parent), '--max-memory', BUDGET],
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
    yield url, out
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
    """Choose the files in the component's file input; the upload has finished when the component lists them (Gradio
    shows a name as its stem and its extension apart: wait for the stem). On a busy machine the page may not have
    attached its handlers yet when the first choice is made: choose again, but only while the component lists none
    of the files (choosing again after an upload started would add a second copy to a multi-file box)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f'#{elem_id}')
    stems = [Path(p).stem for p in paths]
    for attempt in range(1, attempts + 1):
        if attempt == 1 or not any(box.get_by_text(stem).count() for stem in stems):
            box.locator('input[type=file]').set_input_files([str(p) for p in paths])
        try:
            for stem in stems:
                box.get_by_text(stem).first.wait_for(timeout=JOB_TIMEOUT_MS // attempts)
            return
        except PlaywrightTimeout:
            if attempt == attempts:
                raise


def run_and_wait(page, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    from playwright.sync_api import expect

    page.locator('#run').click()
    status = page.locator('#status')
    expect(status).to_contain_text(re.compile('Done|Could not'), timeout=timeout_ms)
    return status.inner_text()


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
    assert page.locator('#texture img').count() == 1
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
    page.close()


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

