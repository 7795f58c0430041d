"""How docs/netron_*.png and docs/model_explorer_*.png were taken: each model served by its
viewer and photographed in headless Chromium. Not part of jaxlite; needs Debian's `chromium`,
`pip install playwright pillow netron ai-edge-model-explorer` and jaxlite (for the adapter).

    python docs/screenshots.py URL OUT.png [WIDTH HEIGHT [ZOOM_OUTS]]

with URL from ``netron FILE -p PORT`` (``http://localhost:PORT/``; FILE the output of
``jaxlite ir m.jlite --generic`` or ``jaxlite export``) or from ``model-explorer m.jlite
--extensions=jaxlite.model_explorer --no_open_in_browser --port=PORT`` (the URL it prints).
The pictures were then cropped to their graphs and set side by side with Pillow.
"""

import sys

from playwright.sync_api import sync_playwright


def main() -> None:
    url, out = sys.argv[1], sys.argv[2]
    width, height = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (1200, 900)
    zoom_outs = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu", "--use-gl=swiftshader"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_timeout(1500)
        consent = page.get_by_text("Accept", exact=True)  # Netron's first-run cookie notice
        if consent.count():
            consent.first.click()
        page.wait_for_timeout(3000)
        for _ in range(zoom_outs):  # Netron's zoom-out button, bottom left
            page.mouse.click(59, height - 27)
            page.wait_for_timeout(400)
        page.wait_for_timeout(10000 if "model-explorer" in url or "data=" in url else 1500)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main()
