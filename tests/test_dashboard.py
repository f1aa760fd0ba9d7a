"""Browser test: the local SwanLab dashboard shows a real run's train/loss chart with its points (headless Chromium)."""
import html
import json
import os

import pytest

from tiny_run import tiny_run
from zhpretrain import dashboard


@pytest.mark.slow
def test_the_dashboard_chart_page_shows_the_runs_loss_points(tmp_path_factory, tmp_path):
    if dashboard.browser() is None:
        message = "no Chromium: apt-get install chromium fonts-noto-cjk"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run the browser test)")
        pytest.skip(message)
    root = tiny_run(tmp_path_factory)
    shot = dashboard.screenshot(root / "swanlog", tmp_path / "dashboard.png", "out")

    log = json.loads((root / "out" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [s for s, _ in shot["points"]] == [h["step"] for h in log if "loss" in h] == [2, 4, 6]
    assert [v for _, v in shot["points"]] == pytest.approx([h["loss"] for h in log if "loss" in h], rel=1e-6)
    # The page the browser rendered (after its scripts ran) holds the chart, drawn on a canvas.
    page = shot["page"]
    assert ">train/loss</p>" in page and "<canvas" in page[page.index(">train/loss</p>"):]
    # The samples panel shows the texts of the newest evaluation (step 6), read back from train.log, each with its caption
    # (without captions swanboard's text panel stays blank).
    logged = [line.split(": ", 1)[1] for line in (root / "out" / "train.log").read_text(encoding="utf-8").splitlines()
              if line.startswith("eval sample @ step 6: ")]
    panel = page[page.index(">samples</p>"):][:20_000]
    assert len(logged) == 3 and all(f">{html.escape(t.replace(chr(0x23ce), chr(10)), quote=False)}</div>" in panel
                                for t in logged), panel[:3000]
    assert ">eval sample 1</div>" in panel
    png = (tmp_path / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000  # a blank or loading page compresses to a few KB
