"""The README's screenshot of the web page: the Flow on the offline models (the trained world model,
at 25 steps), the page's service beside it, a typed prompt, two pictures.

    python -m devtools.page_screenshot [--out docs/web-page.png]

Needs Debian's chromium (make system-deps). Every process it starts is stopped before it returns.
"""

import argparse
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from devtools.offline_flow import ROOT, serve_flow_process
from devtools.web_harness import CHROMIUM, CHROMIUM_FLAGS, serve_web

VIEWPORT = {'width': 1024, 'height': 768}
PROMPT = 'a painting of a red apple on a wooden table'
SETTINGS = {'num_images': '2', 'seed': '7'}
STEPS = 25  # the Executor's default; the offline harness serves fewer, for the tests
PICTURES_SECONDS = 120


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'docs' / 'web-page.png')
    return parser.parse_args()


def screenshot(url: str, out: Path) -> None:
    """Type the prompt with SETTINGS, wait for the pictures, save the whole page to ``out``."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.click('#settings summary')
            for name, value in SETTINGS.items():
                page.fill(f'#parameters [name={name}]', value)
            page.fill('#prompt', PROMPT)
            page.click('#generate')
            # Polled from here: the page's Content-Security-Policy forbids wait_for_function's eval.
            pictures_shown = (
                f"document.querySelectorAll('#images img').length == {SETTINGS['num_images']}"
                " && [...document.querySelectorAll('#images img')].every(i => i.complete)"
                " && document.getElementById('status').hidden"  # done: previews replaced
            )
            deadline = time.monotonic() + PICTURES_SECONDS
            while not page.evaluate(pictures_shown):
                if time.monotonic() > deadline:
                    raise RuntimeError(f'no pictures within {PICTURES_SECONDS} s')
                time.sleep(0.2)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main():
    args = parse_args()
    with serve_flow_process('--num-inference-steps', str(STEPS)) as flow:
        with serve_web('--gateway', flow.http) as url:
            screenshot(url, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
