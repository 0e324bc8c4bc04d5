"""End-to-end: the real FiftyOne App in headless Chromium, driven as a user drives it.

The test starts the App server (``python -m fiftyone.server.main``) on a free loopback port, with
this repository as its only plugin and the session's private database, then clicks through:

- the operator browser -> "Segment with text prompts" -> prompts, threshold, model -> Execute,
  and checks the sidebar shows the new field and the dataset holds ``Detections`` with masks;
- a sample in the modal -> the "Refine SAM3 masks" panel -> a detection selected on the image ->
  "Use selected labels as negatives" -> Refine with boxes -> Accept, and checks the dataset;
- a sample in the modal, the panel beside the image -> a detection selected on the image -> "Set up
  click drawing" -> a positive click drawn with the annotation mode's polyline tool -> Refine with
  points -> Accept -> Undo, and checks the dataset at each step.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and Python ``playwright``; ``.ci/install-browser``
installs both. Without them the tests are skipped. Screenshots go to ``$SAM3_E2E_SCREENSHOTS``
(e.g. ``docs/screenshots``) when set, else to the test's temporary directory.

Every wait is on state, never on a fixed time: on the App server's answer to the request an action
sends (the plugin's form resolution, an operator or panel run: :class:`ServerAnswers`), then on the
element that answer draws. The time limits are only there to end a test whose server hangs; they are
far above what a step takes on a loaded machine.

Every screenshot the README shows is written here, by the test that checks what it shows.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.helpers import REPO_ROOT

CHROMIUM = os.environ.get("SAM3_E2E_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.isfile(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (run .ci/install-browser)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="Python playwright missing (run .ci/install-browser)"
    ),
]

#: how long the App may take to come up (s), to draw what a step changes once the server has answered
#: (ms), and to answer one request (s): limits for a hung server, not the expected durations
SERVER_START_TIMEOUT = 180
STEP_TIMEOUT_MS = 60_000
SERVER_ANSWER_TIMEOUT = 600
VIEWPORT = {"width": 1400, "height": 900}
#: tall enough for the whole text-prompts form in one screenshot
FORM_VIEWPORT = {"width": 1400, "height": 2600}
OPERATOR_LABEL = "Segment with text prompts"
PANEL_NAME = "refine_with_negative_boxes"
PANEL_LABEL = "Refine SAM3 masks"
CLICKS_FIELD = "sam3_clicks"


# -- the App server -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/fiftyone", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        # poll, bounded by the deadline; the server gives no readiness signal of its own
        time.sleep(0.5)
    with open(log_path, errors="replace") as log:
        tail = log.read()[-3000:]
    raise RuntimeError(f"the FiftyOne App server at {url} did not answer within {timeout}s; its log ends:\n{tail}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The URL of a FiftyOne App server running with this repository as its plugin."""
    work = tmp_path_factory.mktemp("app")
    plugins_dir = work / "plugins"
    plugins_dir.mkdir()
    (plugins_dir / "sam3").symlink_to(REPO_ROOT, target_is_directory=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = str(work / "server.log")
    # inherits FIFTYONE_DATABASE_URI: the server uses this session's private database
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins_dir), FIFTYONE_DO_NOT_TRACK="true")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_server(url, process, log_path, SERVER_START_TIMEOUT)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


# -- data ---------------------------------------------------------------------------------------


def _draw_image(path, height: int, width: int, seed: int) -> str:
    """A flat background with a few filled ellipses: something to look at in the screenshots."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width - 70)), int(rng.integers(0, height - 60))
        draw.ellipse([x, y, x + 70, y + 60], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(path)
    return str(path)


@pytest.fixture
def app_dataset(tmp_path):
    """A persistent dataset (the App server is another process) of four drawn images; deleted after."""
    import fiftyone as fo

    sizes = [(240, 320), (300, 220), (224, 224), (180, 240)]
    paths = [_draw_image(tmp_path / f"shapes{i}.png", h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    dataset = fo.Dataset(f"sam3-e2e-{uuid.uuid4().hex[:8]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=path) for path in paths])
    dataset.compute_metadata()
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    from playwright.sync_api import expect

    expect.set_options(timeout=STEP_TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT)
    # the App's own e2e flag: no "Explore Enterprise" popover over the grid
    context.add_init_script("window.IS_PLAYWRIGHT = true;")

    # the App links fonts and docs on the internet; nothing outside the server is needed or reachable
    def only_the_app(route):
        if route.request.url.startswith((app_url, "data:", "blob:")):
            return route.continue_()
        return route.abort()

    context.route("**/*", only_the_app)
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture
def screenshots(tmp_path):
    directory = os.environ.get("SAM3_E2E_SCREENSHOTS") or str(tmp_path / "screenshots")
    os.makedirs(directory, exist_ok=True)
    return directory


class ServerAnswers:
    """The App's requests to the plugin (``/operators/...``: form resolution, operator and panel
    runs), counted as they start and finish, so that a step waits for the server's answer to its
    action, however long a loaded machine makes it, rather than for a fixed time."""

    def __init__(self, page):
        self.page = page
        self.pending = 0
        self.finished = 0
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    @staticmethod
    def _ours(request) -> bool:
        # not the execution store's subscription: an event stream that stays open
        return "/operators/" in request.url and "subscribe" not in request.url

    def _started(self, request):
        if self._ours(request):
            self.pending += 1

    def _ended(self, request):
        if self._ours(request):
            self.pending -= 1
            self.finished += 1

    def after(self, action) -> None:
        """Runs ``action``, then waits until the server has answered at least one plugin request
        made since and none is still open (an answer may trigger another: a form re-resolves)."""
        before = self.finished
        action()
        deadline = time.monotonic() + SERVER_ANSWER_TIMEOUT
        while self.pending > 0 or self.finished == before:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the App server did not answer within {SERVER_ANSWER_TIMEOUT}s "
                    f"({self.pending} plugin request(s) open)"
                )
            self.page.wait_for_timeout(50)  # lets Playwright deliver the network events


def _open_dataset(page, app_url: str, dataset) -> None:
    page.goto(f"{app_url}/datasets/{dataset.name}")
    page.locator("[data-cy=fo-grid] [data-cy=looker]").first.wait_for()


def _form_input(container, label: str, nth: int = 1):
    """The ``nth`` input after the form label ``label`` (the App's forms do not tie labels to inputs)."""
    return container.locator(f'xpath=.//p[normalize-space()="{label}"]/following::input[{nth}]')


def _add_prompt(answers: ServerAnswers, modal, number: int, text: str) -> None:
    from playwright.sync_api import expect

    # The App registers a new list item asynchronously: typing before the form has resolved with
    # the empty item loses the text. The plugin flags the empty item, which proves it arrived.
    answers.after(modal.get_by_role("button", name="Add text prompts").click)
    expect(modal.get_by_text(f"prompt {number} is blank")).to_be_visible()
    answers.after(lambda: _form_input(modal, "Text prompts", number).fill(text))
    expect(modal.get_by_text(f"prompt {number} is blank")).to_have_count(0)


def _run_text_prompts_operator(page, checkpoint: str, prompts: list[str], screenshots: str) -> None:
    from playwright.sync_api import expect

    answers = ServerAnswers(page)
    page.locator("[data-cy=fo-grid-actions] [data-cy=action-browse-operations]").click()
    page.locator("[data-cy=operators-browser-search]").fill("Segment with text")
    answers.after(page.locator("[data-cy=operators-browser]").get_by_text(OPERATOR_LABEL, exact=True).click)

    form = page.locator("[data-cy=operators-prompt-modal]")
    expect(form.get_by_text("needs at least one prompt")).to_be_visible()
    for number, text in enumerate(prompts, start=1):
        _add_prompt(answers, form, number, text)
    answers.after(lambda: _form_input(form, "Score threshold").fill("0"))
    model = _form_input(form, "Model")
    answers.after(lambda: model.fill(checkpoint))
    expect(model).to_have_value(checkpoint)
    model.press("Tab")  # leave the field, as a user does before pressing Execute
    expect(form.get_by_text("Could not load SAM3")).to_have_count(0)
    execute = form.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled()
    # the whole form in one picture: prompts, the per-prompt table, de-duplication, limits, shards
    page.set_viewport_size(FORM_VIEWPORT)
    form.get_by_text("Text prompts", exact=True).first.scroll_into_view_if_needed()
    expect(form.get_by_text("Split into N tasks", exact=True)).to_be_in_viewport()
    expect(execute).to_be_in_viewport()
    bottom = execute.bounding_box()
    height = min(FORM_VIEWPORT["height"], int(bottom["y"] + bottom["height"]) + 40)  # down to the buttons
    page.screenshot(
        path=os.path.join(screenshots, "operator-form.png"),
        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height},
    )
    page.set_viewport_size(VIEWPORT)

    # the run's summary replaces the form (another dialog) once the server has run the operator
    answers.after(execute.click)
    summary = page.get_by_role("dialog").filter(has=page.get_by_text("Detections written:"))
    expect(summary).to_be_visible()
    summary.get_by_role("button", name="Done").click()
    expect(page.locator("[data-cy=operators-prompt-modal]")).to_have_count(0)


# -- the flows ----------------------------------------------------------------------------------


def test_segment_with_text_prompts_from_the_operator_browser(page, app_url, app_dataset, tiny_checkpoint, screenshots):
    import fiftyone as fo
    from playwright.sync_api import expect

    from sam3_ops.sdk.runs import get_run

    _open_dataset(page, app_url, app_dataset)
    expect(page.locator("[data-cy=sidebar-field-sam3]")).to_have_count(0)

    _run_text_prompts_operator(page, str(tiny_checkpoint), ["circle", "blob"], screenshots)

    # the App reloaded the dataset: the new field is in the sidebar, and its masks are drawn
    expect(page.locator("[data-cy=sidebar-field-sam3]")).to_be_visible()
    expect(page.locator("[data-cy=checkbox-sam3] input")).to_be_checked()
    # the grid is redrawn after the reload: wait for every thumbnail to be drawn again
    expect(page.locator("[data-cy=fo-grid] [data-cy=looker] canvas[canvas-loaded=true]")).to_have_count(
        len(app_dataset)
    )
    page.screenshot(path=os.path.join(screenshots, "grid-masks.png"))

    dataset = fo.load_dataset(app_dataset.name)
    dataset.reload()  # the App server wrote it: this process's cached copy is stale
    assert dataset.has_field("sam3")
    run = get_run(dataset, "sam3").settings
    assert run.labels == ["circle", "blob"], "the prompts typed in the form reach the run"
    assert run.threshold == 0.0
    assert run.model_path == str(tiny_checkpoint)
    for sample in dataset:
        assert isinstance(sample["sam3"], fo.Detections)
        assert sample["sam3"].detections, f"threshold 0 keeps every query on {sample.filepath}"
        for detection in sample["sam3"].detections:
            assert detection.label in {"circle", "blob"}
            assert detection.mask is not None and detection.mask.dtype == bool
    assert set(dataset.distinct("sam3.detections.label")) == {"circle", "blob"}


def _segment_with_sdk(dataset, checkpoint: str) -> None:
    """Writes a SAM3 field the way an earlier run would have (the operator flow is tested above)."""
    import sam3_ops
    from sam3_ops.sdk.runs import record_run

    model = sam3_ops.load_model(str(checkpoint), prompts=["circle"], threshold=0.0, device="cpu")
    dataset.apply_model(model, label_field="sam3", batch_size=4, num_workers=0, progress=False)
    record_run(dataset, "sam3", model)


def _point_on_a_detection(sample, canvas_box: dict) -> tuple[float, float, str]:
    """Page coordinates of a pixel inside the smallest mask of ``sample['sam3']``, and that label's id.

    The modal draws the image centred in its canvas, scaled to fit.
    """
    width, height = sample.metadata.width, sample.metadata.height
    scale = min(canvas_box["width"] / width, canvas_box["height"] / height)
    left = canvas_box["x"] + (canvas_box["width"] - width * scale) / 2
    top = canvas_box["y"] + (canvas_box["height"] - height * scale) / 2
    detections = sorted(sample["sam3"].detections, key=lambda d: d.bounding_box[2] * d.bounding_box[3])
    for detection in detections:
        ys, xs = np.nonzero(detection.mask)
        if not len(xs):
            continue
        middle = len(xs) // 2
        box_x, box_y, box_w, box_h = detection.bounding_box
        # mask pixels are relative to the box; the box is relative to the image
        x = box_x * width + (xs[middle] + 0.5) * box_w * width / detection.mask.shape[1]
        y = box_y * height + (ys[middle] + 0.5) * box_h * height / detection.mask.shape[0]
        return left + x * scale, top + y * scale, detection.id
    raise AssertionError(f"no detection with a non-empty mask on {sample.filepath}")


def _open_panel(page, modal):
    """Opens the refinement panel in the modal: a tab of the modal, else from the "+" panel menu."""
    from playwright.sync_api import expect

    tab = modal.locator(f"[data-cy=panel-tab-{PANEL_NAME}]")
    new_panel = modal.locator("[data-cy=new-panel-btn]")
    expect(tab.or_(new_panel).first).to_be_visible()  # the modal's panel bar has rendered
    if not tab.count():
        new_panel.click()
        page.get_by_text(PANEL_LABEL, exact=True).last.click()
    tab.click()
    return modal.locator(f"[data-cy=panel-content-{PANEL_NAME}]")


def test_refine_with_negative_boxes_panel(page, app_url, app_dataset, tiny_checkpoint, screenshots):
    import fiftyone as fo
    from playwright.sync_api import expect

    from sam3_ops.curation.proposals import REFINEMENTS_FIELD

    _segment_with_sdk(app_dataset, tiny_checkpoint)
    first = app_dataset.first()
    before_ids = {detection.id for detection in first["sam3"].detections}

    answers = ServerAnswers(page)
    _open_dataset(page, app_url, app_dataset)
    page.locator("[data-cy=fo-grid] [data-cy=looker]").first.click()
    modal = page.locator("[data-cy=modal]")
    canvas = modal.locator("[data-cy=modal-looker-container] canvas").first
    expect(canvas).to_be_visible()
    expect(modal.get_by_text(first.filepath)).to_be_visible()

    # select one detection on the image, as a curator does
    x, y, _ = _point_on_a_detection(first, canvas.bounding_box())
    page.mouse.click(x, y)
    expect(modal.locator("[data-cy=action-manage-selected]")).to_have_text("1")

    panel = _open_panel(page, modal)
    expect(panel.get_by_text(f"Refining the open sample {first.id}")).to_be_visible()

    use_selected = panel.get_by_role("button", name="Use selected labels as negatives (1 selected)")
    expect(use_selected).to_be_enabled()
    answers.after(use_selected.click)
    expect(panel.get_by_text("1 selected label(s) will be used as negative boxes")).to_be_visible()

    answers.after(panel.get_by_role("button", name="Refine with boxes", exact=True).click)
    expect(panel.get_by_text("Refined 1 sample(s)")).to_be_visible()
    expect(panel.get_by_text(re.compile(r"circle: \d+ → \d+"))).to_be_visible()  # the before -> after counts
    panel.get_by_text("Refined 1 sample(s)").scroll_into_view_if_needed()
    page.screenshot(path=os.path.join(screenshots, "refine-panel.png"))

    answers.after(panel.get_by_role("button", name="Accept", exact=True).click)
    accepted = panel.get_by_text(re.compile(r"Accepted: 'sam3' updated on 1 sample"))
    app_error = page.get_by_text("GraphQL API Error")
    expect(accepted.or_(app_error).first).to_be_visible()
    assert not app_error.count(), f"the App failed after Accept: {app_error.first.inner_text()}"

    dataset = fo.load_dataset(app_dataset.name)
    dataset.reload()  # the App server wrote it: this process's cached copy is stale
    sample = dataset[first.id]
    records = sample[REFINEMENTS_FIELD]
    assert [record["status"] for record in records] == ["accepted"]
    assert len(records[0]["negative_boxes"]) == 1
    assert isinstance(sample["sam3"], fo.Detections)
    after_ids = {detection.id for detection in sample["sam3"].detections}
    assert after_ids != before_ids, "the accepted proposal replaced the field's detections"
    for other in dataset.skip(1):
        assert not other[REFINEMENTS_FIELD], "only the open sample is refined"


def _image_point(sample, canvas_box: dict, x: float, y: float) -> tuple[float, float]:
    """Page coordinates -> the image's pixel coordinates (the image is centred in its canvas, scaled to fit)."""
    width, height = sample.metadata.width, sample.metadata.height
    scale = min(canvas_box["width"] / width, canvas_box["height"] / height)
    left = canvas_box["x"] + (canvas_box["width"] - width * scale) / 2
    top = canvas_box["y"] + (canvas_box["height"] - height * scale) / 2
    return (x - left) / scale, (y - top) / scale


def test_click_refine_accept_and_undo_in_the_sample(page, app_url, app_dataset, tiny_checkpoint, screenshots):
    """One full click refinement, as a curator does it: the object clicked on the image, a positive
    point drawn in the sample's annotation mode, Refine with points, Accept, Undo."""
    import fiftyone as fo
    from playwright.sync_api import expect

    from sam3_ops.curation.proposals import REFINEMENTS_FIELD

    _segment_with_sdk(app_dataset, tiny_checkpoint)
    first = app_dataset.first()
    original = first["sam3"].to_dict()

    answers = ServerAnswers(page)
    _open_dataset(page, app_url, app_dataset)
    page.locator("[data-cy=fo-grid] [data-cy=looker]").first.click()
    modal = page.locator("[data-cy=modal]")
    canvas = modal.locator("[data-cy=modal-looker-container] canvas").first
    expect(canvas).to_be_visible()
    panel = _open_panel(page, modal)
    modal.get_by_role("button", name="Split horizontally").click()  # the image and the panel side by side

    # once per dataset: the click field (and the proposals' field), then the page reloaded so that
    # the App knows them; the sample and the panel beside it come back as they were
    answers.after(panel.get_by_role("button", name="Set up click drawing").click)
    expect(panel.get_by_text(f"'{CLICKS_FIELD}' is ready")).to_be_visible()
    page.reload()
    expect(modal.locator(f"[data-cy=sidebar-field-{CLICKS_FIELD}]")).to_be_visible()
    expect(panel.get_by_text("Select the detection to refine")).to_be_visible()

    # the object: the detection clicked on the image (the App selects the topmost one there)
    expect(canvas).to_be_visible()
    x, y, _ = _point_on_a_detection(first, canvas.bounding_box())
    page.mouse.click(x, y)
    expect(modal.locator("[data-cy=action-manage-selected]")).to_have_text("1")
    chosen = panel.get_by_text(re.compile(r"Object: circle \(detection [0-9a-f]{24}\)"))
    expect(chosen).to_be_visible()
    object_id = re.search(r"[0-9a-f]{24}", chosen.inner_text()).group()
    assert object_id in {d.id for d in first["sam3"].detections}

    # a positive click, drawn with the annotation mode's polyline tool: each click places a vertex,
    # which the App saves at once (a new field's first label is its first class, "positive")
    modal.locator("[data-cy=annotate]").click()
    modal.locator("[data-cy=polyline-mode]").click()
    drawing = modal.locator("[data-cy=lighter-sample-renderer-canvas]")
    expect(drawing).to_be_visible()
    drawing_box = drawing.bounding_box()
    with page.expect_response(lambda r: r.request.method == "PATCH" and f"/sample/{first.id}" in r.url) as saved:
        page.mouse.click(x, y)
    assert saved.value.ok, f"the App could not save the click: {saved.value.status}"
    expect(modal.get_by_text("Edit Polyline")).to_be_visible()
    modal.locator("[data-cy=annotate-edit-back]").click()
    app_dataset.reload()
    clicks = app_dataset[first.id][CLICKS_FIELD]
    assert [(p.label, len(p.points[0])) for p in clicks.polylines] == [("positive", 1)]
    modal.locator("[data-cy=explore]").click()

    answers.after(panel.get_by_role("button", name="Refine with points", exact=True).click)
    expect(panel.get_by_text(re.compile(r"^Refined `?circle`?: the proposal is in 'sam3_refined'"))).to_be_visible()
    expect(panel.get_by_text(re.compile(r"circle refined with 1 positive and 0 negative point"))).to_be_visible()
    # the App shows the open sample's new labels after a page reload: the proposal and the click
    page.reload()
    expect(panel.get_by_text("1 sample(s) have a proposal waiting to be accepted")).to_be_visible()
    modal.locator("[data-cy=checkbox-sam3] input").uncheck()
    expect(modal.locator("[data-cy=checkbox-sam3_refined] input")).to_be_checked()
    expect(modal.locator("[data-cy=modal-looker-container] canvas").first).to_be_visible()
    expect(panel.get_by_text(re.compile(r"proposed, circle with 1 positive and 0 negative point"))).to_be_attached()
    panel.get_by_text(f"Points: 1 positive, 0 negative ({CLICKS_FIELD}: 1)").scroll_into_view_if_needed()
    page.screenshot(path=os.path.join(screenshots, "click-refine.png"))

    dataset = fo.load_dataset(app_dataset.name)
    dataset.reload()  # the App server wrote it: this process's cached copy is stale
    record = dataset[first.id][REFINEMENTS_FIELD][-1]
    assert record["kind"] == "points" and record["status"] == "proposed" and record["object_id"] == object_id
    assert record["point_labels"] == [1]
    clicked = _image_point(first, drawing_box, x, y)
    np.testing.assert_allclose(record["points"][0], clicked, atol=3)  # the click, in the image's pixels
    proposal_ids = [d.id for d in dataset[first.id]["sam3_refined"].detections]
    assert proposal_ids == [record["result_id"] if d.id == object_id else d.id for d in first["sam3"].detections]

    app_error = page.get_by_text("GraphQL API Error")
    answers.after(panel.get_by_role("button", name="Accept", exact=True).click)
    accepted = panel.get_by_text(re.compile(r"Accepted: 'sam3' updated on 1 sample"))
    expect(accepted.or_(app_error).first).to_be_visible()
    assert not app_error.count(), f"the App failed after Accept: {app_error.first.inner_text()}"
    dataset.reload()
    sample = dataset[first.id]
    assert [d.id for d in sample["sam3"].detections] == proposal_ids
    assert sample[CLICKS_FIELD] is None, "Accept clears the clicks"

    answers.after(panel.get_by_role("button", name="Undo", exact=True).click)
    expect(panel.get_by_text(re.compile(r"Undone: 'sam3' restored on 1 sample")).or_(app_error).first).to_be_visible()
    assert not app_error.count(), f"the App failed after Undo: {app_error.first.inner_text()}"
    dataset.reload()
    sample = dataset[first.id]
    assert sample["sam3"].to_dict() == original, "Undo restores the field exactly"
    assert [r["status"] for r in sample[REFINEMENTS_FIELD]] == ["undone"]


# -- calibration --------------------------------------------------------------------------------

CALIBRATE_LABEL = "Calibrate prompts"


def _grid_checkpoint(directory) -> str:
    """The tiny checkpoint with a box of its own for each of its 20 queries (``grid_boxes``), as in
    tests/test_calibrate.py: the plain one predicts nearly one box for every query, so any hit
    would match any ground truth and the PR curves would be flat."""
    from sam3_ops.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(directory, grid_boxes=True)


def _ground_truth_from_hits(dataset, checkpoint: str) -> None:
    """A ``ground_truth`` field of class "shape" the model finds imperfectly: its "circle" hits
    scoring above their median, a quarter of them left out and a fifth moved to a corner."""
    import fiftyone as fo

    import sam3_ops

    sam3_ops.segment(dataset, "hits", prompts=["circle"], threshold=0.0, model_path=checkpoint, device="cpu")
    median = float(np.median(dataset.values("hits.detections.confidence", unwind=True)))
    counter = iter(range(10**6))
    for sample in dataset.iter_samples(autosave=True):
        truth = []
        for detection, k in ((d, next(counter)) for d in sample["hits"].detections):
            if detection.confidence >= median and k % 4:
                box = [0.9, 0.9, 0.05, 0.05] if k % 5 == 0 else list(detection.bounding_box)
                truth.append(fo.Detection(label="shape", bounding_box=box))
        sample["ground_truth"] = fo.Detections(detections=truth)
    dataset.delete_sample_field("hits")
    dataset.delete_run("sam3_hits")


def test_calibrate_then_segment_with_the_calibrated_prompts(page, app_url, app_dataset, screenshots, tmp_path):
    """Calibrate prompts from the operator browser: the table and the PR curves show; the output's
    button opens Segment with text prompts with the calibrated prompt in its table, which runs."""
    import fiftyone as fo
    from playwright.sync_api import expect

    import sam3_ops
    from sam3_ops.app.calibrate_operators import CALIBRATED_FIELD

    checkpoint = _grid_checkpoint(tmp_path / "grid")
    _ground_truth_from_hits(app_dataset, checkpoint)
    assert app_dataset.count("ground_truth.detections") > 0

    answers = ServerAnswers(page)
    _open_dataset(page, app_url, app_dataset)
    page.locator("[data-cy=fo-grid-actions] [data-cy=action-browse-operations]").click()
    page.locator("[data-cy=operators-browser-search]").fill("Calibrate")
    answers.after(page.locator("[data-cy=operators-browser]").get_by_text(CALIBRATE_LABEL, exact=True).click)

    form = page.locator("[data-cy=operators-prompt-modal]")
    words = _form_input(form, "Words for 'shape'")
    expect(words).to_have_value("shape")  # the class name, until the curator gives others
    answers.after(lambda: words.fill("circle, blob"))
    answers.after(lambda: _form_input(form, "Fewest ground-truth objects to calibrate a class").fill("1"))
    model = _form_input(form, "Model")
    answers.after(lambda: model.fill(checkpoint))
    expect(model).to_have_value(checkpoint)
    model.press("Tab")
    expect(form.get_by_text("Could not load SAM3")).to_have_count(0)
    expect(form.get_by_text("SAM3 will run 2 wording(s) of 1 class(es) on 4 samples, once")).to_be_visible()
    execute = form.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled()

    # the output replaces the form: the per-class table, the PR curves, the segment button
    answers.after(execute.click)
    output = page.get_by_role("dialog").filter(has=page.get_by_text("Per class: the wording and threshold chosen"))
    expect(output).to_be_visible()
    dataset = fo.load_dataset(app_dataset.name)
    dataset.reload()  # the App server wrote it: this process's cached copy is stale
    result = sam3_ops.get_calibration(dataset, "default")
    assert result is not None, "the run is stored"
    (row,) = result.classes
    assert row.label == "shape" and row.text in ("circle", "blob") and set(row.candidates) == {"circle", "blob"}
    expect(output.get_by_role("cell", name=row.text, exact=True)).to_be_visible()
    expect(output.get_by_role("cell", name="shape", exact=True)).to_be_visible()
    legend = output.locator(".js-plotly-plot .legendtext")
    expect(legend).to_have_count(2)  # a PR curve per wording
    expect(output.locator(".js-plotly-plot").get_by_text(re.compile(rf"^shape: {row.text} \(chosen\)"))).to_be_visible()
    page.screenshot(path=os.path.join(screenshots, "calibrate.png"))

    # the button opens the text operator with the calibrated prompt in its table
    answers.after(output.get_by_role("button", name="Segment with calibrated prompts").click)
    text_form = page.locator("[data-cy=operators-prompt-modal]").filter(has=page.get_by_text(OPERATOR_LABEL))
    expect(text_form).to_be_visible()
    expect(_form_input(text_form, "Prompt")).to_have_value(row.text)
    expect(_form_input(text_form, "Label")).to_have_value("shape")
    expect(_form_input(text_form, "Threshold")).to_have_value(str(row.threshold))
    expect(_form_input(text_form, "Output field")).to_have_value(CALIBRATED_FIELD)
    expect(_form_input(text_form, "Model")).to_have_value(checkpoint)
    execute = text_form.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled()
    answers.after(execute.click)
    summary = page.get_by_role("dialog").filter(has=page.get_by_text("Detections written:"))
    expect(summary).to_be_visible()

    dataset.reload()
    run = sam3_ops.get_run(dataset, CALIBRATED_FIELD).settings
    assert [(p.text, p.label, p.threshold) for p in run.prompts] == [(row.text, "shape", row.threshold)]
    assert set(dataset.distinct(f"{CALIBRATED_FIELD}.detections.label")) <= {"shape"}
