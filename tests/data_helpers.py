"""Helpers of the data tests: where the real images are, and the sizes of the CUFED-layout fixtures."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'

# Reference sizes (h, w) of the CUFED-layout training fixture: CUFED's references vary in size, up to 160x160.
TRAIN_REF_SIZES = [(160, 160), (160, 120), (120, 160), (150, 144), (100, 112), (160, 160)]
# CUFED5-layout test fixture: HR sizes that are not multiples of 4 or 8 and references of varied sizes.
CUFED5_HR_SIZES = [(130, 98), (101, 142), (97, 97)]
CUFED5_REF_SIZES = [(126, 90), (120, 140), (95, 101), (140, 100), (88, 130)]


def shared_data_dir(*parts: str) -> Path:
    """A folder under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f'real image data {path} is missing (../shared/data relative to the repository root)')
    return path
