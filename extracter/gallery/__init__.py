"""The reference gallery: references found for each LR image in a folder of photos (docs/gallery.md).

- :mod:`.descriptor`: the global descriptor (the network's own VGG-19 relu3_1, pooled) and the model's identity;
- :mod:`.index`: the index of a gallery (stored without pickle, updated incrementally, locked, shared under
  torchrun);
- :mod:`.select`: the choice for one LR image (:func:`~extracter.gallery.select.select_references`: a cosine
  shortlist, then a re-rank with the network's own search and a greedy choice by coverage);
- :mod:`.folder`: a folder's choice for ``infer.py --gallery`` and test.py, a video's per-frame choice, the web
  page's calls, and ``references.csv``.
"""
