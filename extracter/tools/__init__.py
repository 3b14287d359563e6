"""The user tools behind ``scripts/`` and the ``extracter-*`` console scripts (see setup.py): each module has a
``main(argv=None)`` that returns the exit status (:func:`extracter.utils.cli.run_main`).

- :mod:`~extracter.tools.demo` (``make demo``, ``extracter-demo``): the main job on a bundled real example;
- :mod:`~extracter.tools.convert_official` (``extracter-convert``): original and mmagic checkpoints to BasicSR ones;
- :mod:`~extracter.tools.create_lmdb` (``extracter-create-lmdb``): CUFED or any folder packed into LMDBs;
- :mod:`~extracter.tools.prepare_vgg19` (``extracter-prepare-vgg19``): the canonical local VGG-19 file;
- :mod:`~extracter.tools.make_demo_trainset` (``extracter-make-demo-trainset``): the CPU demo model's pairs;
- :mod:`~extracter.tools.show_dataset` (``extracter-show-dataset``): a dataset's samples as an image grid;
- :mod:`~extracter.tools.measure`: what the demo, the developer benchmarks (``benchmarks/``, not part of the
  package) and the tests share (PSNR/SSIM as reported, convolution FLOPs).

The tools find ``pretrained/``, ``options/`` and ``results/`` in the checkout they are installed from (``pip install
-e .``, as ``make venv`` does).
"""
