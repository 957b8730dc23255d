"""Exact copies by content hash and leak-free splits, on real photos with planted leaks.

The planted leaks: a byte-identical copy of a train image in test, the same file twice in val
(identical, same split: a duplicate but no leak), and a re-encoded, slightly cropped copy of
another train image in test (a near-duplicate only the embeddings can see).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from shoal.cli import main
from shoal.ingest.images import import_source
from shoal.store import StoreError, Workspace
from shoal.workflows.embed import embed_dataset
from shoal.workflows.splits import content_hashes, exact_duplicates, leak_free

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def leaky(sample_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    upload = tmp_path_factory.mktemp("upload")
    images = sorted(sample_images.glob("train/*/*.jpg"))
    for split, chosen in (
        ("train", images[:30:2]),
        ("val", images[31:40:3]),
        ("test", images[41:60:3]),
    ):
        for image in chosen:
            target = upload / split / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)

    def planted(split: str, image: Path, name: str) -> Path:
        target = upload / split / image.parent.name / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    shutil.copy(images[0], planted("test", images[0], "copy-of-train.jpg"))
    shutil.copy(images[31], planted("val", images[31], "again.jpg"))
    with Image.open(images[2]) as photo:
        width, height = photo.size
        photo.convert("RGB").crop((4, 4, width - 4, height - 4)).save(
            planted("test", images[2], "reencoded.jpg"), quality=60
        )
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    import_source(workspace, upload, dataset="leaky")
    embed_dataset(workspace.open("leaky"), batch_size=16)
    return workspace


def _ids_of(frame, name: str) -> set[str]:  # type: ignore[no-untyped-def]
    return set(frame.loc[frame["source"].str.endswith(name), "sample_id"])


def test_byte_identical_files_are_found_by_their_content(leaky: Workspace) -> None:
    ds = leaky.open("leaky")
    frame = exact_duplicates(ds)
    samples = ds.samples()
    assert frame["group"].nunique() == 2 and len(frame) == 4
    for members in frame.groupby("group")["sample_id"]:
        sources = samples.set_index("sample_id").loc[list(members[1]), "source"]
        assert len({Path(s).name for s in sources} - {"copy-of-train.jpg", "again.jpg"}) == 1
    crossing = frame.groupby("group")["split"].nunique()
    assert sorted(crossing.tolist()) == [1, 2]  # the train/test copy leaks, the val pair not
    hashes = content_hashes(samples["path"])
    assert all(h is not None and len(h) == 64 for h in hashes)
    assert content_hashes([None, "images/ab/not-a-hash.jpg"]).tolist() == [None, None]


def test_the_leak_free_split_moves_only_the_leaking_copies(leaky: Workspace) -> None:
    ds = leaky.open("leaky")
    samples = ds.samples()
    leaking = _ids_of(samples, "copy-of-train.jpg") | _ids_of(samples, "reencoded.jpg")

    exact_only = leak_free(ds, near=False).to_frame()
    assert set(exact_only.loc[exact_only["moved"], "sample_id"]) == _ids_of(
        samples, "copy-of-train.jpg"
    )

    plan = leak_free(ds, priority=["train", "val", "test"])
    frame = plan.to_frame()
    assert set(frame.loc[frame["moved"], "sample_id"]) == leaking
    assert (frame.loc[frame["moved"], "clean_split"] == "train").all()
    grouped = frame[frame["group"] >= 0].groupby("group")["clean_split"].nunique()
    assert (grouped == 1).all()  # no group spans splits any more
    unchanged = frame[~frame["sample_id"].isin(leaking)]
    assert (unchanged["split"] == unchanged["clean_split"]).all()


def test_the_cli_saves_the_leak_free_split_as_a_new_column(
    leaky: Workspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = str(leaky.root)
    assert main(["duplicates", "leaky", "--exact", "--workspace", root]) == 0
    out = capsys.readouterr().out
    assert "4 samples are byte-identical copies, in 2 groups" in out and "1 groups cross" in out
    out_file = tmp_path / "plan.csv"
    args = ["splits", "leaky", "--priority", "train,val,test", "--out", str(out_file)]
    assert main([*args, "--save-column", "clean_split", "--workspace", root]) == 0
    out = capsys.readouterr().out
    assert "2 groups of exact and near-duplicate copies cross splits" in out
    assert "moves 2 (priority)" in out and "2 from test to train" in out
    samples = leaky.open("leaky").samples()
    moved = samples["split"] != samples["clean_split"]
    assert set(samples.loc[moved, "sample_id"]) == _ids_of(samples, "copy-of-train.jpg") | _ids_of(
        samples, "reencoded.jpg"
    )
    assert out_file.read_text().startswith("sample_id,split,clean_split,group,moved")
    with pytest.raises(StoreError, match="one of the dataset's own columns"):
        from shoal.workflows.splits import save_split_column

        save_split_column(leaky.open("leaky"), leak_free(leaky.open("leaky")), "split")


def test_the_duplicates_page_offers_the_leak_free_split(
    leaky: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.app.test_pages import assert_clean, open_app

    at = open_app(leaky, monkeypatch, page="pages/outliers.py", ds="leaky", show="duplicates")
    at.run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Byte-identical files"] == "4"
    captions = " ".join(c.value for c in at.caption)
    assert "2 groups of exact or near copies cross splits (4 samples)" in captions
    assert "moves 2 of them" in captions
    at.button(key="outliers_split_save").click().run()
    assert_clean(at)
    assert at.success and "`clean_split`" in at.success[0].value
    samples = leaky.open("leaky").samples()
    assert int((samples["split"] != samples["clean_split"]).sum()) == 2
