"""Every page under Streamlit's AppTest: the real sample dataset, an empty workspace, and the
interactions that matter (import report, job progress, links restoring the view).

The upload import path the Datasets page calls is tested without Streamlit in
tests/shoal/app/test_uploads.py."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from shoal import jobs
from shoal.app.selection import Selection
from shoal.store import Workspace

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = (
    "pages/datasets.py",
    "pages/jobs.py",
    "pages/map.py",
    "pages/outliers.py",
    "pages/similar.py",
    "pages/compare.py",
)
TITLES = {
    "pages/datasets.py": "Datasets",
    "pages/jobs.py": "Jobs",
    "pages/map.py": "Map",
    "pages/outliers.py": "Outliers & issues",
    "pages/similar.py": "Similar",
    "pages/compare.py": "Compare",
}


def open_app(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, *, page: str | None = None, **params: str
) -> AppTest:
    """The app on ``workspace``, on ``page``, opened with the query ``params`` (not run yet)."""
    monkeypatch.setenv("SHOAL_WORKSPACE", str(workspace.root))
    monkeypatch.delenv("SHOAL_ACCESS_TOKEN", raising=False)
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in params.items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def sample_ws(embedded_sample: Workspace) -> Workspace:
    return embedded_sample


# --------------------------------------------------------------------------- smoke


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_sample_dataset(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = open_app(sample_ws, monkeypatch, page=page).run()
    assert_clean(at)
    assert [t.value for t in at.title] == [TITLES[page]]
    assert at.query_params["ds"] == "sample"
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
@pytest.mark.parametrize("section", ["outliers", "duplicates", "mislabels"])
def test_issue_sections_render(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    at = open_app(sample_ws, monkeypatch, page="pages/outliers.py", show=section).run()
    assert_clean(at)
    assert at.segmented_control(key="outliers_section").value == section
    assert any(b.label.startswith("Export") for b in at.download_button)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_empty_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = open_app(Workspace(tmp_path / "empty"), monkeypatch, page=page).run()
    assert_clean(at)
    assert [t.value for t in at.title] == [TITLES[page]]
    assert at.info, "an empty workspace should say what to do next"


# --------------------------------------------------------------------------- links


@pytest.mark.slow
def test_link_restores_map_colouring_and_selection(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [3, 10, 42, 100]
    n_rows = len(sample_ws.open("sample").samples())
    token = Selection.from_rows(rows, n_rows=n_rows).to_token()
    at = open_app(
        sample_ws, monkeypatch, page="pages/map.py", ds="sample", color="split", sel=token
    ).run()
    assert_clean(at)
    assert at.selectbox(key="view_color").value == "split"
    assert at.session_state["view_sel"] == token
    assert [h.value for h in at.subheader][0] == f"{len(rows)} selected"
    assert len(at.image) == len(rows)  # a thumbnail per selected sample
    assert at.query_params["color"] == "split" and at.query_params["sel"] == token
    share = [c.value for c in at.sidebar.code]
    assert share and "color=split" in share[0] and "sel=" in share[0]


@pytest.mark.slow
def test_link_opens_the_map_in_its_layout(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(sample_ws, monkeypatch, page="pages/map.py", ds="sample", layout="pca").run()
    assert_clean(at)
    assert at.selectbox(key="view_layout").value == "pca"
    assert any(" · PCA of " in c.value for c in at.caption)
    assert at.query_params["layout"] == "pca"
    at = open_app(sample_ws, monkeypatch, page="pages/map.py", ds="sample", layout="mds").run()
    assert_clean(at)
    assert at.selectbox(key="view_layout").value == "umap"


@pytest.mark.slow
def test_outlier_threshold_shows_on_a_histogram_and_moves_with_the_link(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the fixed z > 3.5 flagged nothing on real sets and the page only said
    "Nothing crosses the threshold"; the threshold could not be seen or moved."""
    import shoal.workflows.analyse as aw

    scores = aw.outliers(sample_ws.open("sample")).result.scores
    at = open_app(sample_ws, monkeypatch, page="pages/outliers.py").run()
    assert_clean(at)
    assert at.get("plotly_chart"), "the score histogram"
    assert at.toggle(key="outliers_cut_auto_ensemble").value is True
    assert "cut" not in at.query_params
    cut = float(np.quantile(scores, 0.9))
    at = open_app(sample_ws, monkeypatch, page="pages/outliers.py", cut=str(cut)).run()
    assert_clean(at)
    assert at.toggle(key="outliers_cut_auto_ensemble").value is False
    expected = int((scores > at.slider(key="outliers_cut_slider_ensemble").value).sum())
    captions = " ".join(c.value for c in at.caption)
    assert f"**{expected:,}** of {len(scores):,} samples flagged" in captions
    assert "your threshold" in captions and float(at.query_params["cut"]) == pytest.approx(cut)
    at = open_app(sample_ws, monkeypatch, page="pages/outliers.py", cut="1e9").run()
    assert_clean(at)
    assert any("Ignored the link's cut=" in w.value for w in at.warning)


@pytest.mark.slow
def test_a_map_selection_is_saved_as_a_collection_and_colours_the_map(
    tmp_path: Path, embedded_sample: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from shoal.store.collections import Collections

    workspace = Workspace(tmp_path / "ws")  # a copy: this test writes collections
    shutil.copytree(embedded_sample.root, workspace.root)
    samples = workspace.open("sample").samples()
    rows = [3, 10, 42]
    token = Selection.from_rows(rows, n_rows=len(samples)).to_token()
    at = open_app(workspace, monkeypatch, page="pages/map.py", ds="sample", sel=token).run()
    assert_clean(at)
    at.text_input(key="view_collection_name").input("odd-ones")
    at.text_input(key="view_collection_note").input("found on the map")
    at.button(key="view_collection_save").click().run()
    assert_clean(at)
    assert at.success and "3 saved in collection `odd-ones`" in at.success[0].value
    saved = Collections(workspace.open("sample")).get("odd-ones")
    assert set(saved.ids) == set(samples["sample_id"].iloc[rows])
    assert saved.note == "found on the map" and saved.provenance["selection"] == token
    at = open_app(
        workspace, monkeypatch, page="pages/map.py", ds="sample", color="collection: odd-ones"
    ).run()
    assert_clean(at)
    assert at.selectbox(key="view_color").value == "collection: odd-ones"


@pytest.mark.slow
def test_flagged_outliers_and_similar_results_are_saved_as_collections(
    tmp_path: Path, embedded_sample: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import shoal.workflows.analyse as aw
    from shoal.store.collections import Collections

    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(embedded_sample.root, workspace.root)
    ds = workspace.open("sample")
    scores = aw.outliers(ds).result.scores
    cut = float(np.sort(scores)[-6])  # the five highest scores are above it
    at = open_app(workspace, monkeypatch, page="pages/outliers.py", cut=str(cut)).run()
    assert_clean(at)
    at.text_input(key="outliers_collection_name").input("odd")
    at.button(key="outliers_collection_save").click().run()
    assert_clean(at)
    saved = Collections(ds).get("odd")
    expected = set(ds.samples()["sample_id"].to_numpy()[np.flatnonzero(scores > cut)])
    assert set(saved.ids) == expected and len(expected) == 5
    assert saved.provenance["page"] == "outliers"

    first_id = ds.samples()["sample_id"].iloc[0]
    at = open_app(workspace, monkeypatch, page="pages/similar.py", q=first_id, k="12").run()
    assert_clean(at)
    at.selectbox(key="similar_collection").set_value("odd")
    at.button(key="similar_collection_save").click().run()
    assert_clean(at)
    found = aw.similar(ds, sample_ids=[first_id], k=12)
    similar_ids = set(found.sample_ids[found.result.indices])
    assert set(Collections(ds).get("odd").ids) == expected | similar_ids


@pytest.mark.slow
def test_the_datasets_page_lists_exports_and_deletes_collections(
    tmp_path: Path, embedded_sample: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from shoal.store.collections import Collections

    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(embedded_sample.root, workspace.root)
    ds = workspace.open("sample")
    Collections(ds).create("odd", ds.samples()["sample_id"].head(4), note="look again")
    at = open_app(workspace, monkeypatch, page="pages/datasets.py", ds="sample").run()
    assert_clean(at)
    assert "Collections" in [h.value for h in at.subheader]
    listed = at.dataframe[-1].value
    assert listed["collection"].tolist() == ["odd"] and listed["size"].tolist() == [4]
    labels = [b.label for b in at.get("download_button")]
    assert {"CSV", "Parquet", "COCO", "Images (zip)"} <= set(labels)
    at.button(key="datasets_collection_delete").click().run()
    assert_clean(at)
    assert Collections(ds).names() == []


@pytest.mark.slow
def test_link_restores_box_selection_against_all_points(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = sample_ws.open("sample")
    import shoal.workflows.analyse as aw

    coords = aw.project(ds).result.coords
    x0, x1 = np.quantile(coords[:, 0], [0.1, 0.6])
    y0, y1 = np.quantile(coords[:, 1], [0.2, 0.9])
    selection = Selection(kind="box", boxes=((float(x0), float(x1), float(y0), float(y1)),))
    expected = len(Selection.from_token(selection.to_token()).resolve(coords))
    at = open_app(sample_ws, monkeypatch, page="pages/map.py", sel=selection.to_token()).run()
    assert_clean(at)
    assert expected > 0
    assert [h.value for h in at.subheader][0] == f"{expected} selected"


@pytest.mark.slow
def test_link_restores_comparison_and_similar_query(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(
        sample_ws,
        monkeypatch,
        page="pages/compare.py",
        ref="split=test",
        cur="split=train",
        method="mmd",
    ).run()
    assert_clean(at)
    assert at.selectbox(key="compare_ref_choice").value == "split=test"
    assert at.selectbox(key="compare_cur_choice").value == "split=train"
    assert at.selectbox(key="compare_method").value == "mmd"
    assert "Reference / current" in [m.label for m in at.metric]
    counts = sample_ws.open("sample").samples()["split"].value_counts()
    expected = f"{counts['test']} / {counts['train']}"
    assert [m.value for m in at.metric if m.label == "Reference / current"] == [expected]
    assert "Pick what to label next" in [h.value for h in at.subheader]
    assert at.number_input(key="compare_n").value == 24
    assert any("every current sample is within cosine distance" in c.value for c in at.caption)

    first_id = sample_ws.open("sample").samples()["sample_id"].iloc[0]
    at = open_app(sample_ws, monkeypatch, page="pages/similar.py", q=first_id, k="12").run()
    assert_clean(at)
    assert at.text_input(key="similar_q").value == first_id
    assert at.select_slider(key="similar_k").value == 12
    assert [h.value for h in at.subheader] == ["12 nearest"]


def test_bad_selection_in_link_is_a_warning_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path / "ws")
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    _embeddings_only_dataset(workspace, tmp_path, vectors)
    at = open_app(
        workspace, monkeypatch, page="pages/map.py", ds="vectors", sel="r:%%%not-a-token"
    ).run()
    assert_clean(at)
    assert any("cannot read the selection" in w.value for w in at.warning)
    assert "sel" not in at.query_params


# --------------------------------------------------------------------------- jobs


def _record(workspace: Workspace, **changes) -> str:
    """A finished job's record, as the runner writes it (no process behind it)."""
    job_id = "20260101000000" + os.urandom(4).hex()
    record = jobs.JobRecord(id=job_id, kind="embed", dataset="vectors", params={}, **changes)
    workspace.jobs_dir.mkdir(parents=True, exist_ok=True)
    jobs.runner._save(workspace, record)
    return job_id


def test_running_job_shows_progress_and_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path / "ws")
    _embeddings_only_dataset(
        workspace, tmp_path, np.ones((5, 4), np.float32) + np.eye(5, 4, dtype=np.float32)
    )
    job_id = jobs.submit(
        workspace,
        "tests.shoal.jobs.job_tasks:count",
        dataset="vectors",
        params={"total": 400, "delay": 0.05},
    )
    try:
        deadline = time.monotonic() + 60
        while jobs.get(workspace, job_id).progress.done < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        at = open_app(workspace, monkeypatch, job=job_id).run()  # the job id travels in the link
        assert_clean(at)
        bars = at.get("progress")
        assert bars, "a running job shows a progress bar"
        assert re.search(r"\d+ / 400 steps · 20\.0 steps/s · ETA \d+s", bars[0].text), bars[0].text
        assert 0 < bars[0].value < 100
        cancel = [b for b in at.button if b.label == "Cancel"]
        assert cancel
        cancel[0].click().run(timeout=60)
        assert jobs.get(workspace, job_id).state == "cancelled"
    finally:
        jobs.cancel(workspace, job_id, grace_seconds=10)


def test_progress_caption() -> None:
    """The caption the job panel and the Jobs page show."""
    assert (
        jobs.JobProgress(120, 355, 41.33, 5.7, "images").caption()
        == "120 / 355 images · 41.3 images/s · ETA 6s"
    )
    assert (
        jobs.JobProgress(355, 355, 40.0, 0.0, "images").caption()
        == "355 / 355 images · 40.0 images/s"
    )
    assert jobs.format_seconds(3725) == "1h 02m" and jobs.format_seconds(None) == "—"


def test_failed_job_shows_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = Workspace(tmp_path / "ws")
    _embeddings_only_dataset(workspace, tmp_path, np.eye(6, 4, dtype=np.float32) + 1)
    job_id = _record(workspace, state="failed", error="image 7 is truncated: re-export it")
    at = open_app(workspace, monkeypatch, page="pages/jobs.py", job=job_id).run()
    assert_clean(at)
    assert any("image 7 is truncated" in e.value for e in at.error)
    at = open_app(workspace, monkeypatch, job=job_id).run()
    assert any("image 7 is truncated" in e.value for e in at.error)


# --------------------------------------------------------------------------- the import report


def test_import_report_lists_every_rejected_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path / "ws")
    _embeddings_only_dataset(workspace, tmp_path, np.eye(6, 4, dtype=np.float32) + 1)
    rejected = [{"file": f"bad{i}.jpg", "reason": "truncated or corrupt image"} for i in range(30)]
    at = open_app(workspace, monkeypatch)
    at.session_state["datasets_report"] = {
        "dataset": "vectors",
        "source": "x.zip",
        "imported": 6,
        "rejected": rejected,
        "labels": {},
    }
    at.run()
    assert_clean(at)
    tables = [d.value for d in at.dataframe]
    assert any(len(t) == 30 and list(t.columns) == ["file", "reason"] for t in tables)
    assert {m.label: m.value for m in at.metric}["Rejected"] == "30"


def _embeddings_only_dataset(workspace: Workspace, tmp_path: Path, vectors: np.ndarray) -> None:
    from shoal.ingest.embeddings import create_from_embeddings

    path = tmp_path / "vectors.npy"
    np.save(path, vectors)
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "sample_id,label,split\n"
        + "".join(
            f"s{i},{'ab'[i % 2]},{'train' if i % 3 else 'test'}\n" for i in range(len(vectors))
        )
    )
    create_from_embeddings(workspace, "vectors", path, metadata_file=meta)
    workspace.open("vectors").update_meta(default_embedding="user")


def test_embeddings_only_dataset_shows_metadata_cards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path / "ws")
    vectors = np.random.default_rng(3).normal(size=(60, 12)).astype(np.float32)
    _embeddings_only_dataset(workspace, tmp_path, vectors)
    at = open_app(
        workspace,
        monkeypatch,
        page="pages/map.py",
        sel=Selection.from_rows([0, 1], n_rows=60).to_token(),
    ).run()
    assert_clean(at)
    assert not at.image
    cards = " ".join(m.value for m in at.markdown)
    assert "`sample_id: s0`" in cards and "`label: a`" in cards


def test_access_token_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(Workspace(tmp_path / "ws"), monkeypatch)
    monkeypatch.setenv("SHOAL_ACCESS_TOKEN", "s3cret")
    at.run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Shoal"] and not at.sidebar.selectbox
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert at.error and at.error[0].value == "That token is not right."
    at.text_input[0].input("s3cret")
    at.button[0].click().run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Datasets"]


def test_unreadable_sign_in_settings_refuse_everyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a secrets.toml that could not be parsed meant "no OIDC", so the gate fell
    open (or back to the token). Streamlit's TOML parser raising is injected here."""
    import tomllib

    from streamlit.runtime.secrets import Secrets

    def broken(self: Secrets) -> bool:
        raise tomllib.TOMLDecodeError("Expected ']' at the end of a table declaration")

    at = open_app(Workspace(tmp_path / "ws"), monkeypatch)
    monkeypatch.setattr(Secrets, "load_if_toml_exists", broken)
    at.run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Shoal"] and not at.sidebar.selectbox
    assert "cannot be read, so nobody can enter" in at.error[0].value


@pytest.mark.parametrize("dup", ["5", "nan", "-1"])
def test_a_link_with_an_impossible_duplicate_threshold_still_opens(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch, dup: str
) -> None:
    """Regression: ?dup=5 crashed the Outliers page (a slider value outside its range)."""
    at = open_app(sample_ws, monkeypatch, page="pages/outliers.py", show="duplicates", dup=dup)
    at.run()
    assert_clean(at)
    assert any("Ignored the link's dup=" in w.value for w in at.warning)
    assert at.toggle(key="outliers_dup_auto").value is True


# --------------------------------------------------------------------------- background work


@pytest.mark.slow
def test_query_by_new_image_from_a_link(
    sample_ws: Workspace, monkeypatch: pytest.MonkeyPatch, sample_images: Path
) -> None:
    """A dropped-in query image is kept by content hash, so the link re-runs the same query."""
    image = sorted((sample_images / "test" / "space").iterdir())[0]
    key = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
    stored = sample_ws.root / ".cache" / "queries" / f"{key}{image.suffix.lower()}"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(image.read_bytes())
    at = open_app(sample_ws, monkeypatch, page="pages/similar.py", mode="image", img=key).run()
    assert_clean(at)
    assert at.segmented_control(key="similar_mode").value == "image"
    assert [h.value for h in at.subheader] == ["24 nearest"]
    assert at.query_params["img"] == key and at.query_params["mode"] == "image"


@pytest.mark.slow
def test_large_dataset_asks_for_a_background_analysis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the inline limit the map waits for an 'analyse' job; once it has run, the map opens."""
    import sys

    sys.path.insert(0, str(Path(APP).parent))
    import pages._common as common

    monkeypatch.setattr(common, "INLINE_MAX_SAMPLES", 10)
    workspace = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(4)
    vectors = np.concatenate([rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 4]).astype(
        np.float32
    )
    _embeddings_only_dataset(workspace, tmp_path, vectors)
    at = open_app(workspace, monkeypatch, page="pages/map.py").run()
    assert_clean(at)
    assert [b.label for b in at.button] == ["Compute the map"]
    record = jobs.run_inline(workspace, "analyse", dataset="vectors", params={"embedding": "user"})
    assert record.state == "done", record.error
    assert record.result["steps"].split(", ") == [
        "knn_graph",
        "project",
        "outliers",
        "duplicates",
        "mislabels",
    ]
    at = open_app(workspace, monkeypatch, page="pages/map.py").run()
    assert_clean(at)
    assert not [b for b in at.button if b.label == "Compute the map"]
    assert "80 samples" in " ".join(c.value for c in at.caption)

    # Colouring by novelty needs a comparison: on a large set a link asks for it as a job too,
    # instead of running it inline (regression: ?color=novelty computed it at any size).
    at = open_app(workspace, monkeypatch, page="pages/map.py", color="novelty").run()
    assert_clean(at)
    assert [b.label for b in at.button] == ["Compute the comparison"]
    assert not list((workspace.open("vectors").root / "artefacts").glob("compare/*.npz"))
    at.button[0].click().run()
    job_id = at.session_state["job_id"]
    assert jobs.wait(workspace, job_id, timeout=240).state == "done"
    at = open_app(workspace, monkeypatch, page="pages/map.py", color="novelty").run()
    assert_clean(at)
    assert not at.button and "novelty" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
def test_generate_embeddings_button_runs_the_embed_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_images: Path
) -> None:
    from shoal.ingest.images import import_source

    workspace = Workspace(tmp_path / "ws")
    folder = tmp_path / "few" / "train" / "food"
    folder.mkdir(parents=True)
    for image in sorted((sample_images / "train" / "food").iterdir())[:4]:
        (folder / image.name).write_bytes(image.read_bytes())
    import_source(workspace, tmp_path / "few", dataset="few")
    monkeypatch.delenv("SHOAL_RAY_ADDRESS", raising=False)
    at = open_app(workspace, monkeypatch).run()
    assert_clean(at)
    # The options reach the job; with no cluster configured only this server is offered.
    assert at.selectbox(key="datasets_embed_engine").options == ["this server"]
    at.selectbox(key="datasets_embed_backend").select("torch")
    at.selectbox(key="datasets_embed_precision").select("fp32")
    at.button(key="datasets_embed").click().run()
    job_id = at.session_state["job_id"]
    assert at.query_params["job"] == job_id
    record = jobs.wait(workspace, job_id, timeout=240)
    assert record.state == "done", record.error
    assert (record.params["backend"], record.params["precision"]) == ("torch", "fp32")
    at.run()
    assert_clean(at)
    assert any("finished" in s.value for s in at.success)
    ds = workspace.open("few")
    assert ds.embedding_names() == ["efficientnet_lite0"]
    assert ds.embedding_info("efficientnet_lite0").preprocessing["backend"] == "torch"


def test_link_chooses_the_embedding_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(5)
    _embeddings_only_dataset(workspace, tmp_path, rng.normal(size=(30, 8)).astype(np.float32))
    ds = workspace.open("vectors")
    ds.publish_embeddings(
        "clip", rng.normal(size=(30, 4)), ds.samples()["sample_id"], model="user-provided"
    )
    at = open_app(workspace, monkeypatch, page="pages/similar.py", emb="clip", q="s0", k="12").run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="_embedding_picker").value == "clip"
    assert [h.value for h in at.subheader] == ["12 nearest"]
    assert at.query_params["emb"] == "clip"
    at.sidebar.selectbox(key="_embedding_picker").select("user").run()
    assert_clean(at)
    assert "emb" not in at.query_params or at.query_params["emb"] == "user"


# --------------------------------------------------------------------------- user text on the page

EVIL = ["[click](http://evil)", "<img src=x onerror=alert(1)>", "**bold**", "`[tick](http://evil)`"]


def _evil_dataset(workspace: Workspace, tmp_path: Path) -> None:
    """'vectors': 40 samples labelled with Markdown and HTML, a metadata column named like a link."""
    from shoal.ingest.embeddings import create_from_embeddings

    vectors = np.random.default_rng(8).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    import pandas as pd

    pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(40)],
            "label": [EVIL[i % 4] for i in range(40)],
            "[col](http://evil)": ["x"] * 40,
        }
    ).to_csv(tmp_path / "meta.csv", index=False)
    create_from_embeddings(
        workspace, "vectors", tmp_path / "vectors.npy", metadata_file=tmp_path / "meta.csv"
    )


def _markdown_bodies(at: AppTest) -> list[str]:
    kinds = ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title")
    return [element.value for kind in kinds for element in at.get(kind)]


def test_labels_metadata_and_link_params_are_escaped_in_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: labels, metadata column names and link parameters reached st.caption and
    st.warning as Markdown, so ``[click](http://evil)`` became a link and ``**bold**`` bold."""
    from shoal.app.text import escape_markdown

    workspace = Workspace(tmp_path / "ws")
    _evil_dataset(workspace, tmp_path)

    datasets = open_app(workspace, monkeypatch).run()
    assert_clean(datasets)
    captions = [c.value for c in datasets.caption]
    labels = "Labels: " + ", ".join(f"{escape_markdown(label)} 10" for label in sorted(EVIL))
    assert labels in captions, captions
    assert any(escape_markdown("[col](http://evil)") in c for c in captions), captions

    similar = open_app(workspace, monkeypatch, page="pages/similar.py", q=EVIL[0]).run()
    assert_clean(similar)
    warnings = [w.value for w in similar.warning]
    assert warnings == [f"Unknown sample id(s): {escape_markdown(EVIL[0])}"]

    for body in _markdown_bodies(datasets) + _markdown_bodies(similar):
        for raw in EVIL:
            assert raw not in body, body


def test_metadata_cards_keep_labels_in_code_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.app.text import code_span

    workspace = Workspace(tmp_path / "ws")
    _evil_dataset(workspace, tmp_path)
    token = Selection.from_rows([0, 1, 2, 3], n_rows=40).to_token()
    at = open_app(workspace, monkeypatch, page="pages/map.py", sel=token, color="label").run()
    assert_clean(at)
    cards = [m.value for m in at.markdown if "sample_id" in m.value]
    assert len(cards) == 4
    for row, card in enumerate(cards):
        assert code_span(f"label: {EVIL[row]}") in card.split("  \n"), card


def test_map_legend_shows_labels_as_text_not_html(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: plotly rendered <b>, <a href> and <img> in hover text and legends; labels went
    there unescaped. The WebGL map gets labels as data in its binary payload and its browser code
    writes them with textContent only."""
    from shoal.app.scatter import read_map_payload

    workspace = Workspace(tmp_path / "ws")
    _evil_dataset(workspace, tmp_path)
    at = open_app(workspace, monkeypatch, page="pages/map.py", color="label").run()
    assert_clean(at)
    header, _, _ = read_map_payload(at.get("bidi_component")[0].proto.bytes)
    assert {item[0] for item in header["legend"]["items"]} == set(EVIL)  # verbatim, as text
    source = (Path(APP).parent / "shoal/app/frontend/map/src/index.js").read_text()
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source


def test_job_errors_do_not_show_server_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a failed job's error (often an exception's text) was shown whole, server
    paths included, on the Jobs page and in the job panel."""
    workspace = Workspace(tmp_path / "ws")
    _embeddings_only_dataset(workspace, tmp_path, np.eye(6, 4, dtype=np.float32) + 1)
    secret = workspace.root / "datasets" / "vectors" / "images" / "ab" / "x.jpg"
    job_id = _record(
        workspace,
        state="failed",
        error=f"[Errno 2] No such file or directory: '{secret}' (see [docs](http://evil))",
    )
    for page in ("pages/jobs.py", None):  # the Jobs page, and the job panel of the link's job
        at = open_app(workspace, monkeypatch, page=page, job=job_id).run()
        assert_clean(at)
        errors = [e.value for e in at.error]
        assert errors and all(str(tmp_path) not in e for e in errors), errors
        assert any("x\\.jpg" in e and "\\[docs\\]" in e for e in errors), errors
        for table in (d.value for d in at.dataframe):
            assert str(tmp_path) not in table.to_string(), table
