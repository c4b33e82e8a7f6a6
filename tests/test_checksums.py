"""Files the workflow writes and reads again carry a sha256 recorded at write and checked at every read:
example plans and rendered synthetic splits, as shards (manifest) and checkpoints (card) do."""
from __future__ import annotations

import numpy as np
import pytest

from seelike.data import open_rendered_split, rendered_split_name, write_rendered_split
from seelike.fileio import ChecksumMismatch, checksum_path
from seelike.plan import make_plan, read_plan_file, write_plan_file

CFG = {"kind": "synthetic", "n_classes": 4, "image_size": 8, "seed": 0, "splits": {"analysis": 12}}


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_plan_file_is_checked_at_every_read(tmp_path):
    path = tmp_path / "synth.json"
    write_plan_file(path, make_plan("synth:abc", np.arange(64), 32, 8, 2, 0))
    assert read_plan_file(path)["n_examples"] == 32
    _flip(path, path.read_text().index('"indices"') + 20)        # one bit inside an index: still valid JSON
    with pytest.raises(ChecksumMismatch, match=rf"example plan '{path}' changed since it was written.*--forcerun plan"):
        read_plan_file(path)
    checksum_path(path).unlink()
    with pytest.raises(ChecksumMismatch, match=r"has no recorded sha256"):
        read_plan_file(path)


def test_rendered_split_is_checked_at_every_read(tmp_path):
    path = write_rendered_split(CFG, "analysis", tmp_path / rendered_split_name(CFG, "analysis"))
    images, labels = open_rendered_split(CFG, "analysis", path)
    assert images.shape == (12, 8, 8, 3) and len(labels) == 12
    del images
    # one bit of the sixth image: neither the first nor the last, which are also re-rendered and compared
    header = path.stat().st_size - 12 * 8 * 8 * 3
    _flip(path, header + 5 * 8 * 8 * 3 + 17)
    with pytest.raises(ChecksumMismatch, match=rf"rendered split '{path}' changed since it was written.*delete it"):
        open_rendered_split(CFG, "analysis", path)
