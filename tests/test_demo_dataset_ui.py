"""The page's "Make a demo dataset" control writes the same pictures as the CLI and refuses unknown words."""
import pytest

from common.errors import UserError
from webui.demo_dataset import make


def test_make_demo_dataset_from_the_page(tmp_path):
    message = make("orange circle on a blue background", 3, str(tmp_path / "shapes"), False)
    assert message == f"Wrote 3 pictures of orange circle on a blue background with captions to {tmp_path / 'shapes'}."
    assert len(list((tmp_path / "shapes").glob("*.png"))) == 3
    with pytest.raises(UserError, match="'unicorn'.*knows the shapes"):
        make("a unicorn", 3, str(tmp_path / "other"), False)
    with pytest.raises(UserError, match="already has pictures"):
        make("orange circle on a blue background", 3, str(tmp_path / "shapes"), False)
    with pytest.raises(UserError, match="Destination directory is empty"):
        make("a star", 3, "  ", False)
