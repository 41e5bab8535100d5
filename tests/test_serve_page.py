"""The page at `/`, in a real headless Chromium: four real views in, the guess drawn on the
country's map with its 50 % and 90 % circles and the likeliest cells; errors in words."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serve_helpers import RUN_NAME, live_server, models_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the screenshot is kept (the test's own temp folder unless set).
SCREENSHOT_DIR = os.environ.get("GEOGUESS_SCREENSHOT_DIR")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: install Debian's package (apt-get install chromium), as .ci/run does",
)


@pytest.mark.slow
def test_the_page_locates_four_real_views_on_the_map(real_sample, tmp_path_factory):
    from playwright.sync_api import expect, sync_playwright

    models = models_dir(tmp_path_factory.getbasetemp())
    location = sorted((real_sample / "images").iterdir())[0]
    shots = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path_factory.mktemp("page")
    shots.mkdir(parents=True, exist_ok=True)
    with (
        live_server(models, tmp_path_factory.mktemp("page-server")) as (url, _),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.set_default_timeout(60_000)
            page.goto(url + "/")
            expect(page.locator("#model option")).to_have_count(2)
            expect(page.locator("#land path")).to_have_count(1)  # the country, drawn offline
            page.select_option("#model", RUN_NAME)

            # Errors in words: locating with a view missing says which.
            page.set_input_files("#view-0", str(location / "0.jpg"))
            page.keyboard.press("Tab")
            page.click("#locate")
            expect(page.locator("#error")).to_contain_text("90°, 180°, 270°")

            for heading in ("90", "180", "270"):
                page.set_input_files(f"#view-{heading}", str(location / f"{heading}.jpg"))
            expect(page.locator(".view img")).to_have_count(4)  # the thumbnails
            page.focus("#locate")
            page.keyboard.press("Enter")  # usable by keyboard
            expect(page.locator("#guess")).to_have_count(1)
            expect(page.locator("#error")).to_have_text("")
            answer = page.locator("#answer").inner_text()
            page.screenshot(path=str(shots / "serve-page.png"), full_page=True)

            expected = post_views(url, location)
            assert f"{expected['latitude']:.4f}° N, {expected['longitude']:.4f}° E" in answer
            r50 = float(page.get_attribute("circle.radius50", "r"))
            r90 = float(page.get_attribute("circle.radius90", "r"))
            assert 0 < r50 < r90
            assert math.isclose(r90 / r50, expected["radius90_km"] / expected["radius50_km"])
            cells = page.locator("rect.cell")
            expect(cells).to_have_count(len(expected["top_cells"]))
            shades = [float(cells.nth(i).get_attribute("fill-opacity")) for i in range(5)]
            assert shades == sorted(shades, reverse=True)  # darker when likelier
        finally:
            browser.close()
    assert (shots / "serve-page.png").stat().st_size > 10_000


def post_views(url: str, location: Path) -> dict:
    files = {
        h: (f"{h}.jpg", (location / f"{h}.jpg").read_bytes(), "image/jpeg")
        for h in ("0", "90", "180", "270")
    }
    response = httpx.post(f"{url}/models/{RUN_NAME}/predict", files=files, timeout=60)
    response.raise_for_status()
    return response.json()
