"""The shipped nano captions: one per photograph of the manifest, picked up by image folders (a `<stem>.txt`
beside an image still wins) and by the evaluation runner."""
import json

import numpy as np
from PIL import Image

from onedc_lib.data.folders import NANO_CAPTIONS, ImageFolder, image_caption, shipped_captions


def test_every_manifest_photograph_has_a_caption():
    manifest = json.loads((NANO_CAPTIONS.parent / "nano_manifest.json").read_text())
    captions = json.loads(NANO_CAPTIONS.read_text())["captions"]
    assert sorted(captions) == sorted(f["file"] for f in manifest["files"])
    assert all(isinstance(c, str) and 3 <= len(c.split()) <= 25 for c in captions.values())
    assert len(set(captions.values())) == len(captions)  # every photograph described, not a template


def test_image_folder_items_carry_captions(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    for name in ("mate-backgrounds__Storm.png", "scikit-image__coffee.png", "unknown.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "scikit-image__coffee.txt").write_text("  my own words \n")
    folder = ImageFolder(tmp_path)
    captions = {path.name: folder[i][1] for i, path in enumerate(folder.files)}
    assert captions["mate-backgrounds__Storm.png"] == shipped_captions()["mate-backgrounds__Storm.png"]
    assert "storm" in captions["mate-backgrounds__Storm.png"]
    assert captions["scikit-image__coffee.png"] == "my own words"
    assert captions["unknown.png"] == ""
    assert image_caption(tmp_path / "unknown.png") == ""
