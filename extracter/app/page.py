"""The local web page (Gradio Blocks) over :class:`extracter.app.jobs.JobRunner`.

Inputs: the photo to enlarge, any number of reference photos (none: the single-image model), the model (the
checkpoints found in ``pretrained/``, or the path of a converted checkpoint on this machine), the memory budget and
the search mode. While a job runs the progress bar shows its stage (queued, encoding the reference, search, tiles
i/n) and the time left. The result: a before/after slider (bicubic vs SR), the texture-source picture, the relevance
statistics and the SR PNG to download. Errors are written on the page (``#status``) in plain words.

Import this module only after the upload folder is chosen: :func:`build_page` sets ``GRADIO_TEMP_DIR`` (where
Gradio stores uploads) to the runner's ``upload_dir`` if it is not set yet; the results are served from the job
folders directly (static paths), never copied.
"""

import os
from typing import List, Optional, Sequence

from extracter.app.jobs import DEFAULT_SEARCH, JobError, JobRequest, JobResult, JobRunner
from extracter.inference.options import SEARCH_MODES
from extracter.search import get_method

TITLE = 'EXTRACTER: enlarge a photo x4 with the help of reference photos'
INTRO = ('Drop the photo to enlarge and one or more **reference photos**: pictures of the same scene or subject in '
         'high resolution (another shot, a neighbouring frame). The network copies their fine texture where it '
         'matches. Without a reference a single-image model is used, if one is installed. Everything runs on this '
         'machine; nothing is uploaded anywhere else.')



def available_search_modes() -> List[str]:
    """The search modes this machine can run (an optional method whose package is missing is left out)."""
    return [m for m in SEARCH_MODES if m == 'auto' or get_method(m).available() is None]

def _status(kind: str, text: str) -> str:
    return f'**{kind}** {text}'


def _relevance_text(result: JobResult) -> str:
    h, w = result.sr.shape[:2]
    lines = [f'- **Output:** {w} x {h} pixels, model {result.model}, {result.seconds:.1f} s']
    if result.relevance:
        r = result.relevance
        lines.append(f'- **Relevance of the best reference match** (cosine of the texture features, 1 = the same '
                     f'texture): mean {r["mean"]:.3f}, lowest {r["min"]:.3f}, highest {r["max"]:.3f}')
    if result.search:
        lines.append(f'- **Search:** {result.search}')
    if result.plan:
        lines.append(f'- **Memory plan:** {result.plan}')
    lines += [f'- **Note:** {note}' for note in result.notes]
    return '\n'.join(lines)


def model_choices(runner: JobRunner) -> List[tuple]:
    return [(f'{m.label} ({m.arch}, {"with references" if m.uses_reference else "single image"})', str(m.weights))
            for m in runner.models]


def build_page(runner: JobRunner, models_dir: Optional[str] = None):
    """The page's ``gr.Blocks`` (not launched)."""
    os.environ.setdefault('GRADIO_TEMP_DIR', str(runner.upload_dir))
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    import gradio as gr

    runner.upload_dir.mkdir(parents=True, exist_ok=True)
    runner.jobs_dir.mkdir(parents=True, exist_ok=True)
    # the results are served from the job folders as they are: Gradio copies any other file it serves into its
    # cache (the upload folder), which stored every result twice
    gr.set_static_paths([str(runner.jobs_dir)])
    choices = model_choices(runner)
    default_model = next((v for (label, v), m in zip(choices, runner.models) if m.uses_reference),
                         choices[0][1] if choices else None)
    no_model = '' if choices else (f'No model was found in {models_dir or "pretrained/"}; give the path of a '
                                   'converted checkpoint below.')

    def on_run(lr: Optional[str], refs: Optional[Sequence[str]], model: Optional[str], model_path: str,
               budget: str, search: str, progress=gr.Progress()):  # noqa: B008  (Gradio's convention)
        refs = [r for r in (refs or []) if r]
        request = JobRequest(lr=lr, refs=refs, model=(model_path or '').strip() or model,
                             max_memory=(budget or '').strip() or None,
                             search_mode=search or None,
                             lr_name=os.path.basename(lr) if lr else None,
                             ref_names=[os.path.basename(r) for r in refs])

        def report(p) -> None:
            progress(p.fraction, desc=p.text)

        try:
            result = runner.run(request, report)
        except JobError as err:
            return _status('Could not enlarge the photo:', str(err)), None, gr.update(value=None, visible=False), \
                '', None
        done = _status('Done.', f'The enlarged photo is ready ({result.job_id}).')
        texture_file = result.files.get('texture')  # none for a single-image run: the box is hidden
        return (done, (str(result.files['bicubic']), str(result.files['sr'])),
                gr.update(value=str(texture_file) if texture_file else None, visible=texture_file is not None),
                _relevance_text(result), str(result.files['sr']))

    with gr.Blocks(title='EXTRACTER', analytics_enabled=False) as page:
        gr.Markdown(f'## {TITLE}\n{INTRO}')
        with gr.Row():
            with gr.Column(scale=1):
                lr = gr.File(label='Photo to enlarge (low resolution)', file_count='single', type='filepath',
                             elem_id='lr')
                refs = gr.File(label='Reference photos (optional; high resolution, same scene)',
                               file_count='multiple', type='filepath', elem_id='refs')
                model = gr.Dropdown(choices=choices, value=default_model, label='Model', elem_id='model',
                                    info=no_model or 'Checkpoints found in pretrained/ (with their .yml options; '
                                                     'or alone: their network is read off the weights).')
                model_path = gr.Textbox(label='...or the path of a converted checkpoint on this machine (.pth with '
                                              'its .yml beside it)', placeholder='path/to/model.pth',
                                        elem_id='model_path', interactive=runner.allow_model_paths,
                                        visible=runner.allow_model_paths)
                with gr.Accordion('Memory and search', open=False):
                    budget = gr.Textbox(label='Memory budget (e.g. 4G; default: half of the memory free at start)',
                                        value=runner.max_memory, elem_id='budget')
                    search = gr.Radio(choices=available_search_modes(), value=DEFAULT_SEARCH, elem_id='search',
                                      label='Search (auto: approximate where the exact search is expensive, else '
                                            'exact; dense, chunked and faiss are exact, approximate is '
                                            'sub-quadratic)')
                run = gr.Button('Enlarge x4', variant='primary', elem_id='run')
            with gr.Column(scale=2):
                status = gr.Markdown(_status('Ready.', no_model or 'Add a photo and press "Enlarge x4".'),
                                     elem_id='status')
                slider = gr.ImageSlider(label='Before / after: bicubic (left) vs super-resolved (right)',
                                        type='filepath', format='png', elem_id='slider', interactive=False)
                texture = gr.Image(label='Where the textures came from', type='filepath', format='png',
                                   elem_id='texture', interactive=False, visible=False)
                stats = gr.Markdown('', elem_id='stats')
                download = gr.File(label='Download the enlarged photo (PNG)', elem_id='download', interactive=False,
                                   height=90)
        run.click(on_run, inputs=[lr, refs, model, model_path, budget, search],
                  outputs=[status, slider, texture, stats, download], concurrency_limit=runner.max_waiting + 1,
                  show_progress='full')
    return page
