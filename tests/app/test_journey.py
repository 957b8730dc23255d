"""From finding to fixing, as a user does it in a real Chromium, with the real tools at the end.

On the bundled sample images: the Map coloured by outlier score -> box-select -> save as a
collection -> on the Datasets page, grow it by similarity from a second dataset embedded with
the same model (an unlabelled-pool stand-in) and keep what was found as a collection there ->
download that collection as COCO and as Label Studio tasks -> pycocotools loads the COCO file;
a real Label Studio server (127.0.0.1, SQLite, started and stopped here) imports the tasks with
their pre-annotations, a labeller accepts them, and Shoal imports the project's export back:
the same images and labels.

Screenshots of each step go to artifacts/screenshots/journey-*.png.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import chromium
from benchmarks.bench_view import drag_box
from benchmarks.servers import shoal_server
from shoal import jobs
from shoal.ingest.images import import_source
from shoal.ingest.label_studio import LABELS_VERSION, import_label_studio
from shoal.store import Workspace
from shoal.store.collections import Collections
from shoal.workflows.exports import label_config
from tests.app.test_browser import SCREENSHOTS, VIEWPORT, _no_exception, _shot, _wait_idle
from tests.app.test_label_studio_server import (
    _label_studio_or_skip,
    accept_and_export,
    import_tasks,
    label_studio,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FOUND = "odd"
GROWN = "odd-in-pool"


@pytest.fixture(scope="module")
def two_datasets(
    tmp_path_factory: pytest.TempPathFactory, embedded_sample: Workspace, sample_images: Path
) -> Workspace:
    """The embedded sample dataset, plus 'pool': its test images imported again and embedded."""
    workspace = Workspace(tmp_path_factory.mktemp("journey") / "ws")
    shutil.copytree(embedded_sample.root, workspace.root)
    import_source(workspace, sample_images / "test", dataset="pool")
    record = jobs.run_inline(workspace, "embed", dataset="pool", params={})
    assert record.state == "done", record.error
    return workspace


@pytest.fixture(scope="module")
def server(two_datasets: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not chromium.available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with shoal_server(two_datasets.root, log) as url:
        yield url


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox ``label`` (the list can miss a click during a rerun)."""
    for _ in range(3):
        page.get_by_role("combobox", name=label).click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
        except Exception:  # the list closed under a rerun: open it again
            _wait_idle(page)
            continue
        _wait_idle(page)
        return
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def _save_collection(page, name: str, button: str = "Save as collection") -> None:
    page.get_by_role("button", name=button).first.click()
    popover = page.get_by_test_id("stPopoverBody")
    popover.get_by_role("textbox", name="Name").fill(name)
    popover.get_by_role("button", name="Save ").click()
    _wait_idle(page)
    _no_exception(page)


def test_find_collect_grow_export_and_label(
    server: str, two_datasets: Workspace, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright
    from pycocotools.coco import COCO

    _label_studio_or_skip()
    sample, pool = two_datasets.open("sample"), two_datasets.open("pool")
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            page = browser.new_context(viewport=VIEWPORT, accept_downloads=True).new_page()

            # Find: the map coloured by outlier score, a box over part of it, saved.
            page.goto(f"{server}/map?ds=sample&color=outlier+score")
            _wait_idle(page, timeout=120)
            page.wait_for_function("() => window.shoalMapDrawn !== undefined", timeout=60_000)
            selected, _ = drag_box(
                page, (0.05, 0.15, 0.5, 0.95)
            )  # the left half, below the toolbar
            _wait_idle(page)
            assert 0 < selected < len(sample.samples())
            _shot(page, "journey-1-map-selection")
            _save_collection(page, FOUND)
            found = Collections(sample).get(FOUND)
            assert found.size == selected
            assert found.provenance.get("page") == "map"

            # Grow: more like these, searched in the pool, kept as the pool's collection.
            page.goto(f"{server}/?ds=sample")
            _wait_idle(page, timeout=60)
            page.get_by_text(f"More like these: grow {FOUND}").click()
            _wait_idle(page)
            _choose(page, "Search in", "pool")
            page.get_by_role("button", name="Find more like these").click()
            page.get_by_text("samples of pool within").wait_for(timeout=60_000)
            _wait_idle(page)
            _shot(page, "journey-2-grow")
            page.get_by_test_id("stExpander").filter(has_text="More like these").screenshot(
                path=str(SCREENSHOTS / "journey-2-grow-panel.png")
            )
            _save_collection(page, GROWN, button="Keep ")
            grown = Collections(pool).get(GROWN)
            assert 0 < grown.size <= 50
            assert grown.provenance["grown_from"] == f"sample/{FOUND}"

            # Export: the pool's new collection as COCO and as Label Studio tasks.
            page.goto(f"{server}/?ds=pool")
            _wait_idle(page, timeout=60)
            page.get_by_text("Collections", exact=True).wait_for()
            _wait_idle(page)
            _shot(page, "journey-3-collections")
            files = {}
            for button, suffix in (("COCO", ".json"), ("Label Studio tasks", ".tasks.json")):
                with page.expect_download(timeout=60_000) as download:
                    page.get_by_role("button", name=button, exact=True).click()
                files[suffix] = tmp_path / download.value.suggested_filename
                download.value.save_as(files[suffix])
                assert files[suffix].name.endswith(suffix)
            _no_exception(page)
            _shot(page, "journey-3-export")
        finally:
            browser.close()

    members = sorted(grown.ids)
    samples = pool.samples().set_index("sample_id").loc[members]
    coco = COCO(str(files[".json"]))
    assert len(coco.getImgIds()) == grown.size
    coco_labels = {coco.cats[a["category_id"]]["name"] for a in coco.dataset.get("annotations", [])}
    assert coco_labels <= set(samples["label"])

    tasks = json.loads(files[".tasks.json"].read_text())
    assert sorted(t["data"]["sample_id"] for t in tasks) == members
    with label_studio(tmp_path / "label-studio", document_root=pool.root) as server_ls:
        project_id, imported = import_tasks(
            server_ls, "shoal journey", label_config(pool), pool.root / "images", tasks
        )
        assert imported["task_count"] == grown.size
        assert imported["prediction_count"] == grown.size  # the labels, as pre-annotations
        predictions = server_ls.call("GET", f"/api/predictions?project={project_id}")
        listed = server_ls.call("GET", f"/api/tasks?project={project_id}&page_size=100")
        by_task = {t["id"]: t["data"]["sample_id"] for t in listed["tasks"]}
        for prediction in predictions:
            assert prediction["model_version"] == LABELS_VERSION
            (choice,) = prediction["result"]
            expected = samples.loc[by_task[prediction["task"]], "label"]
            assert choice["value"]["choices"] == [expected]
        export = accept_and_export(server_ls, project_id, predictions)
    (tmp_path / "project.json").write_text(json.dumps(export))

    report = import_label_studio(two_datasets, tmp_path / "project.json", images=pool.root,
                                 dataset="labelled")  # fmt: skip
    assert report.rejected == [] and report.imported == grown.size
    back = two_datasets.open("labelled").samples().set_index("sample_id").loc[members]
    assert back["path"].tolist() == samples["path"].tolist()
    assert back["label"].tolist() == samples["label"].tolist()
