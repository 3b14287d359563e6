"""A local web page for enlarging your own photos: :mod:`.jobs` (the one-job-at-a-time runner over the inference
engine; no Gradio needed), :mod:`.page` (the Gradio page), :mod:`.cli` (``extracter-app``). Needs the ``app`` extra
(``pip install .[app]``) for the page."""
