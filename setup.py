"""Installable package for EXTRACTER / TTSR reference-based super-resolution on BasicSR."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / 'extracter' / 'version.py').read_text()).group(1)


def read_requirements(name: str = 'requirements.txt') -> list:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='extracter',
    version=VERSION,
    description='EXTRACTER and TTSR reference-based image super-resolution on BasicSR',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['extracter', 'extracter.*']),
    python_requires='>=3.9',
    install_requires=read_requirements(),
    # optional: faiss' inner-product index for the approximate search's retrieval (search.approximate.backend: faiss);
    # the local web page (extracter-app) and its browser test
    extras_require={'faiss': ['faiss-cpu>=1.7'],
                    'app': read_requirements('requirements-app.txt'),
                    'app-test': read_requirements('requirements-app-test.txt'),
                    'video': read_requirements('requirements-video.txt')},
    license='MIT',
    entry_points={'console_scripts': [
        'extracter-train = extracter.train:main',
        'extracter-test = extracter.test:main',
        'extracter-infer = extracter.infer:entry_point',
        'extracter-app = extracter.app.cli:main',
        # the user tools (extracter/tools/; scripts/<name>.py runs the same from a checkout)
        'extracter-demo = extracter.tools.demo:main',
        'extracter-convert = extracter.tools.convert_official:main',
        'extracter-create-lmdb = extracter.tools.create_lmdb:main',
        'extracter-prepare-vgg19 = extracter.tools.prepare_vgg19:main',
        'extracter-make-demo-trainset = extracter.tools.make_demo_trainset:main',
        'extracter-show-dataset = extracter.tools.show_dataset:main',
    ]},
)
