"""The local web page (Gradio Blocks) over :class:`extracter.app.jobs.JobRunner`.

Inputs: the photo to enlarge and any number of reference photos (none: the single-image model), each shown as a
thumbnail, uploaded or pasted from the clipboard, or many photos (or a folder of this machine) to choose the references
from ("choose the references for me", K per photo; the ones used are shown with their scores); clickable examples
(:mod:`extracter.app.examples`); the model (short names, its details below the list); in the settings: the path of a
converted checkpoint on this machine, the memory budget and the search mode. While a job runs one progress display (on
the status box) shows its stage and the time left (estimated from the job's work and this machine's measured speed,
:mod:`extracter.app.timing`), and Cancel stops it; closing the tab stops it too (the page's unload event). The result:
the SR at 1:1 with a zoom control (a small result is never stretched), a before/after slider (bicubic vs SR), the
texture-source panels (one picture each), a summary, the technical details (search, memory plan) in a collapsed section,
and the SR PNG to download. Errors are shown in a red box in plain words.

Import this module only after the upload folder is chosen: :func:`build_page` sets ``GRADIO_TEMP_DIR`` (where
Gradio stores uploads) to the runner's ``upload_dir`` if it is not set yet; the results are served from the job
folders directly (static paths), never copied.
"""

import html
import os
import threading
import uuid
from typing import Dict, List, Optional, Sequence
from urllib.parse import quote

from extracter.app.examples import make_examples
from extracter.app.jobs import (
    DEFAULT_SEARCH,
    JobCancelled,
    JobError,
    JobRequest,
    JobResult,
    JobRunner,
    ModelEntry,
    format_seconds,
)
from extracter.gallery.select import DEFAULT_REFS_PER_IMAGE
from extracter.inference.options import SEARCH_MODES
from extracter.search import get_method

TITLE = 'EXTRACTER: enlarge a photo x4 with the help of reference photos'
INTRO = ('Drop the photo to enlarge and one or more **reference photos**: pictures of the same scene or subject in '
         'high resolution (another shot, a neighbouring frame). The network copies their fine texture where it '
         'matches. Without a reference a single-image model is used, if one is installed. Everything runs on this '
         'machine; nothing is uploaded anywhere else.')
ZOOMS = ['fit', '1:1', '2x', '4x']
DEFAULT_ZOOM = '1:1'
STATUS_STYLES = {  # the status box: (border, background, text colour)
    'ready': ('#d1d5db', 'transparent', 'inherit'),
    'done': ('#16a34a', '#f0fdf4', '#14532d'),
    'error': ('#dc2626', '#fef2f2', '#991b1b'),
    'cancelled': ('#d97706', '#fffbeb', '#78350f'),
}


def available_search_modes() -> List[str]:
    """The search modes this machine can run (an optional method whose package is missing is left out)."""
    return [m for m in SEARCH_MODES if m == 'auto' or get_method(m).available() is None]


def status_html(kind: str, title: str, text: str) -> str:
    """The status box: ``kind`` one of :data:`STATUS_STYLES` (an error in red), the words escaped."""
    border, background, colour = STATUS_STYLES[kind]
    return (f'<div class="status status-{kind}" role="{"alert" if kind == "error" else "status"}" '
            f'style="border:1px solid {border};background:{background};color:{colour};padding:8px 12px;'
            f'border-radius:6px"><strong>{html.escape(title)}</strong> {html.escape(text)}</div>')


def result_html(path: Optional[str], width: int = 0, height: int = 0, zoom: str = DEFAULT_ZOOM) -> str:
    """The SR in a scroll box, at 1:1 (its own pixels: never stretched), 2x or 4x (pixels kept sharp), or fitted
    to the box's width (never enlarged)."""
    if not path:
        return '<div id="result-view" class="result-empty"></div>'
    src = html.escape(f'/gradio_api/file={quote(str(path), safe="/")}', quote=True)  # '#', '?', '%' in a folder
    if zoom == 'fit':
        size = 'max-width:100%;height:auto'
    else:
        factor = 1 if zoom == '1:1' else int(zoom.rstrip('x'))
        size = f'width:{width * factor}px;height:{height * factor}px;max-width:none;image-rendering:pixelated'
    return (f'<div id="result-view" style="overflow:auto;max-height:640px;border:1px solid #e5e7eb">'
            f'<img id="result-img" src="{src}" alt="the enlarged photo" data-zoom="{zoom}" '
            f'data-width="{width}" data-height="{height}" style="display:block;{size}"></div>')


def _summary_text(result: JobResult) -> str:
    h, w = result.sr.shape[:2]
    lines = [f'- **Output:** {w} x {h} pixels, model {result.model}, {result.seconds:.1f} s']
    if result.relevance:
        lines.append(f'- **How well the references matched:** {result.relevance["mean"]:.2f} on average '
                     '(1 = the same texture)')
    if result.chosen:
        lines.append('- **References chosen for you:** ' + ', '.join(f'{c["name"]} ({float(c["score"]):.3f})'
                                                                     for c in result.chosen))
    lines += [f'- **Note:** {note}' for note in result.notes]
    return '\n'.join(lines)


def _details_text(result: JobResult) -> str:
    lines = []
    if result.relevance:
        r = result.relevance
        lines.append(f'- **Relevance of the best reference match** (cosine of the texture features, 1 = the same '
                     f'texture): mean {r["mean"]:.3f}, lowest {r["min"]:.3f}, highest {r["max"]:.3f}')
    if result.search:
        lines.append(f'- **Search:** {result.search}')
    if result.plan:
        lines.append(f'- **Memory plan:** {result.plan}')
    lines.append(f'- **Job:** {result.job_id}')
    return '\n'.join(lines)


def chosen_caption(row: Dict) -> str:
    """A chosen reference's caption: its rank, file name and score (what it adds to the photo's coverage)."""
    return f'{row["rank"]}. {row["name"]}: score {float(row["score"]):.3f}'


def short_names(models: Sequence[ModelEntry]) -> List[str]:
    """Each model's short name: its file's stem, or its path under the models folder where stems repeat."""
    stems = [m.weights.stem for m in models]
    return [s if stems.count(s) == 1 else m.label for s, m in zip(stems, models)]


def model_choices(runner: JobRunner) -> List[tuple]:
    return [(name, str(m.weights)) for name, m in zip(short_names(runner.models), runner.models)]


def model_details(runner: JobRunner, weights: Optional[str]) -> str:
    """The chosen model's details (shown under the list): its network, kind and file (its path under the models
    folder: no server paths on the page)."""
    entry = next((m for m in runner.models if str(m.weights) == str(weights)), None)
    if entry is None:
        return 'Checkpoints found in pretrained/ (with their .yml options; or alone: their network is read off the ' \
               'weights).'
    kind = 'uses the reference photos' if entry.uses_reference else 'single image (no reference needed)'
    return f'{entry.arch}, {kind}; {entry.label} in the models folder'


def photo_input(**kwargs):
    """A ``gr.Image`` (thumbnail, upload, paste) that hands the job the uploaded file as it is: its bytes untouched
    (the job's reader does the checks, the EXIF rotation, 16-bit and alpha as the command line does), even when it
    is not a picture Pillow opens (the job then says what is wrong in plain words). Its ``preprocess`` is replaced
    on the instance: a subclass would make Gradio write a type stub (.pyi) beside this module."""
    import gradio as gr

    component = gr.Image(type='filepath', image_mode=None, **kwargs)
    default = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or '').startswith('data:'):
            return str(payload.path)
        return default(payload)

    component.preprocess = preprocess
    return component


class _Sessions:
    """The cancel events of each browser session's jobs, one per click of Enlarge (its token): made as the click
    arrives, before the job may wait in Gradio's queue, so that the session's Cancel button and the closing of its
    tab reach a job that has not started yet too (it then ends as it starts)."""

    def __init__(self) -> None:
        self._events: Dict[str, Dict[str, threading.Event]] = {}
        self._lock = threading.Lock()

    def open(self, session: str) -> str:
        """A new job of ``session`` (Enlarge clicked): its token."""
        token = uuid.uuid4().hex
        with self._lock:
            self._events.setdefault(session, {})[token] = threading.Event()
        return token

    def start(self, session: str, token: Optional[str]) -> threading.Event:
        """The cancel event of the job ``token`` of ``session`` as it starts (a new one for a job not opened by
        :meth:`open`)."""
        with self._lock:
            jobs = self._events.setdefault(session, {})
            if not token or token not in jobs:
                token = token or uuid.uuid4().hex
                jobs[token] = threading.Event()
            return jobs[token]

    def end(self, session: str, token: Optional[str], event: threading.Event) -> None:
        with self._lock:
            jobs = self._events.get(session, {})
            if jobs.get(token) is event:
                del jobs[token]
            if not jobs:
                self._events.pop(session, None)

    def cancel(self, session: str) -> int:
        """Set the events of every job of ``session`` (running, waiting or not started yet); how many."""
        with self._lock:
            events = list(self._events.get(session, {}).values())
        for event in events:
            event.set()
        return len(events)


def build_page(runner: JobRunner, models_dir: Optional[str] = None):
    """The page's ``gr.Blocks`` (not launched)."""
    os.environ.setdefault('GRADIO_TEMP_DIR', str(runner.upload_dir))
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    import gradio as gr

    runner.upload_dir.mkdir(parents=True, exist_ok=True)
    runner.jobs_dir.mkdir(parents=True, exist_ok=True)
    examples = make_examples(runner.examples_dir)
    # the results are served from the job folders as they are: Gradio copies any other file it serves into its
    # cache (the upload folder), which stored every result twice
    gr.set_static_paths([str(runner.jobs_dir), str(runner.examples_dir)])
    choices = model_choices(runner)
    default_model = next((v for (label, v), m in zip(choices, runner.models) if m.uses_reference),
                         choices[0][1] if choices else None)
    no_model = '' if choices else (f'No model was found in {models_dir or "pretrained/"}; give the path of a '
                                   'converted checkpoint in the settings.')
    sessions = _Sessions()
    hidden = gr.update(value=None, visible=False)

    def on_start(request: gr.Request):
        """As Enlarge is clicked: the job's token (its Cancel applies from now on, even while it waits in
        Gradio's queue), the status box emptied (the progress display is drawn on it) and the last result
        cleared."""
        token = sessions.open(request.session_hash) if request is not None else None
        return '', result_html(None), None, hidden, '', '', None, {}, hidden, token

    def on_run(lr: Optional[str], refs, model: Optional[str], model_path: str, budget: str, search: str,
               zoom_value: str, pool, folder: str, k, token: Optional[str], request: gr.Request,
               progress=gr.Progress()):  # noqa: B008  (Gradio's convention)
        refs = [r[0] if isinstance(r, (list, tuple)) else r for r in (refs or [])]
        refs = [str(r) for r in refs if r]
        pool = [str(p) for p in (pool or []) if p]
        job = JobRequest(lr=lr, refs=refs, model=(model_path or '').strip() or model,
                         max_memory=(budget or '').strip() or None, search_mode=search or None,
                         lr_name=os.path.basename(lr) if lr else None,
                         ref_names=[os.path.basename(r) for r in refs], gallery_files=pool,
                         gallery_dir=(folder or '').strip() or None, refs_per_image=k)

        def report(p) -> None:
            progress(p.fraction, desc=p.text)

        session = request.session_hash if request is not None else ''
        cancel = sessions.start(session, token)
        try:
            result = runner.run(job, report, cancel)
        except JobCancelled:
            return (status_html('cancelled', 'Cancelled.', 'The job was stopped; nothing was kept.'),
                    result_html(None), None, hidden, '', '', None, {}, hidden)
        except JobError as err:
            return (status_html('error', 'Could not enlarge the photo:', str(err)), result_html(None), None, hidden,
                    '', '', None, {}, hidden)
        finally:
            sessions.end(session, token, cancel)
        h, w = result.sr.shape[:2]
        sr = str(result.files['sr'])
        textures = [(str(path), label) for label, path in result.textures]
        chosen = [(str(c['thumb']), chosen_caption(c)) for c in result.chosen]
        return (status_html('done', 'Done.', f'The enlarged photo is ready ({w} x {h} pixels, '
                                             f'{format_seconds(result.seconds)}).'),
                result_html(sr, w, h, zoom_value or DEFAULT_ZOOM), (str(result.files['bicubic']), sr),
                gr.update(value=textures or None, visible=bool(textures)), _summary_text(result),
                _details_text(result), sr, {'path': sr, 'w': w, 'h': h},
                gr.update(value=chosen or None, visible=bool(chosen)))

    def on_cancel(request: gr.Request):
        if request is not None and sessions.cancel(request.session_hash):
            return status_html('cancelled', 'Cancelling...', 'the job stops at its next step.')
        return gr.update()

    def on_close(request: gr.Request):
        if request is not None:
            sessions.cancel(request.session_hash)

    def on_zoom(zoom_value: str, shown: Dict):
        if not shown:
            return result_html(None)
        return result_html(shown['path'], shown['w'], shown['h'], zoom_value)

    with gr.Blocks(title='EXTRACTER', analytics_enabled=False) as page:
        gr.Markdown(f'## {TITLE}\n{INTRO}')
        shown = gr.State({})  # the result on show: its path and size (for the zoom)
        with gr.Row():
            with gr.Column(scale=1):
                lr = photo_input(label='Photo to enlarge (low resolution): drop, click or paste',
                                 sources=['upload', 'clipboard'], elem_id='lr', height=220, format='png')
                refs = gr.Gallery(label='Reference photos (optional; high resolution, same scene)', type='filepath',
                                  interactive=True, elem_id='refs', columns=3, height=220, file_types=['image'],
                                  sources=['upload', 'clipboard'], object_fit='contain')
                with gr.Accordion('Choose the references for me, from many photos', open=False,
                                  elem_id='choose'):
                    pool = gr.File(label='Photos to choose from (several; leave the reference photos above empty)',
                                   file_count='multiple', file_types=['image'], type='filepath',
                                   elem_id='gallery_files', height=140)
                    folder = gr.Textbox(label='...or a folder of photos on this machine', elem_id='gallery_dir',
                                        placeholder='/path/to/photos', visible=runner.allow_model_paths,
                                        interactive=runner.allow_model_paths)
                    k = gr.Number(value=DEFAULT_REFS_PER_IMAGE, precision=0, minimum=1, maximum=16,
                                  label='References per photo', elem_id='refs_per_image')
                if examples:
                    gr.Examples(examples=examples, inputs=[lr, refs], label='Examples (click one, then "Enlarge x4"):'
                                ' the motorcycle pair from scikit-image, a quick crop and the whole view',
                                example_labels=['motorcycle, quick crop (LR 40 x 40)',
                                                'motorcycle, whole view (LR 185 x 125)'][:len(examples)],
                                elem_id='examples')
                model = gr.Dropdown(choices=choices, value=default_model, label='Model', elem_id='model',
                                    info=no_model or model_details(runner, default_model))
                with gr.Accordion('Settings', open=False, elem_id='settings'):
                    model_path = gr.Textbox(label='...or the path of a converted checkpoint on this machine (.pth '
                                                  'with its .yml beside it)', placeholder='path/to/model.pth',
                                            elem_id='model_path', interactive=runner.allow_model_paths,
                                            visible=runner.allow_model_paths)
                    budget = gr.Textbox(label='Memory budget (e.g. 4G; default: half of the memory free at start)',
                                        value=runner.max_memory, elem_id='budget')
                    search = gr.Radio(choices=available_search_modes(), value=DEFAULT_SEARCH, elem_id='search',
                                      label='Search (auto: approximate where the exact search is expensive, else '
                                            'exact; dense, chunked and faiss are exact, approximate is '
                                            'sub-quadratic)')
                with gr.Row():
                    run = gr.Button('Enlarge x4', variant='primary', elem_id='run')
                    cancel = gr.Button('Cancel', variant='stop', elem_id='cancel')
            with gr.Column(scale=2):
                status = gr.HTML(status_html('ready', 'Ready.', no_model or 'Add a photo and press "Enlarge x4".'),
                                 elem_id='status', min_height=60)
                zoom = gr.Radio(choices=ZOOMS, value=DEFAULT_ZOOM, label='Zoom (1:1: the result\'s own pixels)',
                                elem_id='zoom')
                view = gr.HTML(result_html(None), elem_id='result')
                slider = gr.ImageSlider(label='Before / after: bicubic (left) vs super-resolved (right)',
                                        type='filepath', format='png', elem_id='slider', interactive=False)
                texture = gr.Gallery(label='Where the textures came from (click a panel to see it whole)',
                                     elem_id='texture', columns=2, height='auto', object_fit='contain',
                                     interactive=False, visible=False)
                chosen = gr.Gallery(label='References chosen for you (name: score)', elem_id='chosen', columns=4,
                                    height=240, object_fit='contain', interactive=False, visible=False,
                                    preview=False, allow_preview=True)
                summary = gr.Markdown('', elem_id='summary')
                with gr.Accordion('Technical details', open=False, elem_id='details'):
                    stats = gr.Markdown('', elem_id='stats')
                download = gr.File(label='Download the enlarged photo (PNG)', elem_id='download', interactive=False,
                                   height=90)
        outputs = [status, view, slider, texture, summary, stats, download, shown, chosen]
        job_token = gr.State(None)  # the job of the last click of Enlarge (see _Sessions)
        model.change(lambda m: gr.update(info=model_details(runner, m)), inputs=[model], outputs=[model],
                     queue=False, show_progress='hidden')
        run.click(on_start, outputs=outputs + [job_token], queue=False, show_progress='hidden').then(
            on_run, inputs=[lr, refs, model, model_path, budget, search, zoom, pool, folder, k, job_token],
            outputs=outputs,
            concurrency_limit=runner.max_waiting + 1, show_progress='full', show_progress_on=[status])
        cancel.click(on_cancel, outputs=[status], queue=False, show_progress='hidden')
        zoom.change(on_zoom, inputs=[zoom, shown], outputs=[view], queue=False,
                    show_progress='hidden')
        page.unload(on_close)
    return page

