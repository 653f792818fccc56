"""`onedc compress / decompress` of one image: a bar over the pieces of work the model reports, on a terminal for
long images, and with $ONEDC_PROGRESS=1 for any single image on any stderr (kept at the end, so that its final
state can be read); $ONEDC_PROGRESS=0 never. The pieces by hand: tests/models/test_progress.py."""
import re

from onedc_lib.cli import main
from test_cli_safety import write_png


def test_a_forced_bar_reaches_its_total_and_zero_turns_it_off(capsys, tmp_path, monkeypatch):
    source, odc, png = write_png(tmp_path / "small.png", 64, 96), tmp_path / "small.odc", tmp_path / "back.png"
    monkeypatch.setenv("ONEDC_PROGRESS", "1")
    assert main(["compress", str(source), "-o", str(odc), "--model", "nano"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{source} -> {odc}: 96 x 64 (W x H)")
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.fullmatch(rf"compress {re.escape(str(source))}: 100%\|\S+\| 8/8 pieces \[\d\d:\d\d\]", final), err
    assert main(["decompress", str(odc), "-o", str(png), "--model", "nano"]) == 0
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.fullmatch(rf"decompress {re.escape(str(odc))}: 100%\|\S+\| 8/8 pieces \[\d\d:\d\d\]", final), final

    monkeypatch.setenv("ONEDC_PROGRESS", "0")
    assert main(["decompress", str(odc), "-o", str(png), "-f", "--model", "nano"]) == 0
    assert "pieces" not in capsys.readouterr().err
