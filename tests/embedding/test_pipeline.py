from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoal.embedding import (
    EmbeddingCancelled,
    ImageDecodeError,
    Progress,
    checkpoint_manifest,
    embed_batch,
    embed_images,
    embed_paths,
    resolve_precision,
)
from shoal.embedding.inference import cpu_supports_bf16
from shoal.embedding.pipeline import default_num_workers
from shoal.embedding.preprocess import load_image, resize_crop
from shoal.store import BatchCheckpoints, CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[2]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_precision_resolution():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")


def test_embed_batch_is_a_pure_function_of_its_batch(lite0, photo_files):
    pixels = torch.from_numpy(
        np.stack([resize_crop(load_image(p), lite0.data_config) for p in photo_files[:4]])
    )
    before = pixels.clone()
    alone = embed_batch(lite0, pixels[:1], precision="fp32")
    together = embed_batch(lite0, pixels, precision="fp32")
    assert torch.equal(pixels, before)
    assert together.shape == (4, 1280) and together.dtype == np.float32
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)
    normalised = (pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    np.testing.assert_allclose(
        embed_batch(lite0, normalised, precision="fp32"), together, rtol=1e-4, atol=1e-5
    )


def test_paths_through_workers_match_in_memory_images(lite0, photo_files):
    files = photo_files[:7]
    from_files = embed_paths(files, lite0, batch_size=3, num_workers=1, precision="fp32")
    in_memory = embed_images([load_image(p) for p in files], lite0, batch_size=4, precision="fp32")
    assert from_files.shape == (7, 1280)
    assert cosine(from_files, in_memory).min() > 0.99999


def test_fast_path_is_faithful_to_fp32_on_real_photos(lite0, photo_files):
    # The torch backend's bf16 path (tests/embedding/test_openvino.py checks OpenVINO's).
    reference = embed_paths(
        photo_files, lite0, batch_size=8, num_workers=1, precision="fp32", backend="torch"
    )
    fast = embed_paths(
        photo_files, lite0, batch_size=8, num_workers=1, precision="auto", backend="torch"
    )
    similarity = cosine(reference, fast)
    assert similarity.mean() >= 0.999
    assert similarity.min() >= 0.995


@pytest.mark.slow
def test_same_category_photos_are_nearer_than_other_categories(lite0, stamp_photos):
    categories = ["animals", "food", "vehicles", "plants"]
    images, labels = [], []
    for label, category in enumerate(categories):
        for path in stamp_photos[category][:10]:
            images.append(Image.open(path))
            labels.append(label)
    labels_array = np.array(labels)
    vectors = embed_images(images, lite0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, np.nan)
    same = labels_array[:, None] == labels_array[None, :]
    for label in range(len(categories)):
        rows = labels_array == label
        within = np.nanmean(similarity[rows][:, rows[None, :].ravel()])
        across = np.nanmean(similarity[rows][:, ~rows])
        assert within > across, categories[label]
    nearest = np.nanargmax(similarity, axis=1)
    accuracy = np.mean(labels_array[nearest] == labels_array)
    assert accuracy >= 0.7, accuracy  # chance is about 0.25
    assert np.nanmean(similarity[same]) > np.nanmean(similarity[~same])


def test_progress_reports_every_batch(lite0, photo_files):
    seen: list[Progress] = []
    files = photo_files[:10]
    embed_paths(files, lite0, batch_size=4, num_workers=0, progress=seen.append)
    assert [p.done for p in seen] == [0, 4, 8, 10]
    assert all(p.total == 10 for p in seen)
    assert seen[0].eta_seconds is None and seen[0].images_per_second == 0.0
    assert all(p.images_per_second > 0 for p in seen[1:])
    assert seen[-1].eta_seconds == 0.0
    assert seen[1].eta_seconds == pytest.approx(6 / seen[1].images_per_second)
    with pytest.raises(AttributeError):
        seen[0].done = 3  # type: ignore[misc]


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_undecodable_file_raises_naming_it(lite0, photo_files, tmp_path, num_workers, damage):
    broken = tmp_path / "broken-photo.jpg"
    if damage == "truncated":
        broken.write_bytes(photo_files[0].read_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="broken-photo.jpg") as caught:
        embed_paths(
            [photo_files[0], broken, photo_files[1]], lite0, batch_size=2, num_workers=num_workers
        )
    assert caught.value.path == str(broken)


def _checkpoints(directory, files, model, *, batch_size, precision="auto"):
    manifest = checkpoint_manifest(files, model, batch_size=batch_size, precision=precision)
    return BatchCheckpoints(directory, manifest)


def test_checkpoints_resume_and_refuse_mismatches(lite0, photo_files, tmp_path):
    files = photo_files[:9]
    partial = tmp_path / "partial"
    first = embed_paths(
        files,
        lite0,
        batch_size=4,
        num_workers=0,
        checkpoints=_checkpoints(partial, files, lite0, batch_size=4, precision="fp32"),
        precision="fp32",
    )
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["model"] == "efficientnet_lite0" and manifest["precision"] == "fp32"
    assert manifest["batch_size"] == 4 and manifest["count"] == 9
    assert sorted(p.name for p in partial.glob("batch-*.npy")) == [
        "batch-0000000000-0000000004.npy",
        "batch-0000000004-0000000008.npy",
        "batch-0000000008-0000000009.npy",
    ]

    seen: list[Progress] = []
    again = embed_paths(
        files,
        lite0,
        batch_size=4,
        num_workers=0,
        checkpoints=_checkpoints(partial, files, lite0, batch_size=4, precision="fp32"),
        precision="fp32",
        progress=seen.append,
    )
    assert [p.done for p in seen] == [9]
    np.testing.assert_array_equal(first, again)

    with pytest.raises(
        CheckpointMismatchError, match="batch_size: checkpoint has 4, this run has 3"
    ):
        _checkpoints(partial, files, lite0, batch_size=3, precision="fp32")
    if cpu_supports_bf16():
        with pytest.raises(CheckpointMismatchError, match="precision: checkpoint has 'fp32'"):
            _checkpoints(partial, files, lite0, batch_size=4, precision="bf16")
    with pytest.raises(CheckpointMismatchError, match="paths_sha256.*delete the directory"):
        _checkpoints(partial, files[::-1], lite0, batch_size=4, precision="fp32")


def test_should_stop_cancels_and_keeps_finished_batches(lite0, photo_files, tmp_path):
    files = photo_files[:8]
    calls = []

    def stop_after_two_batches() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(EmbeddingCancelled):
        embed_paths(
            files,
            lite0,
            batch_size=2,
            num_workers=1,
            checkpoints=_checkpoints(tmp_path, files, lite0, batch_size=2),
            should_stop=stop_after_two_batches,
        )
    assert len(list(tmp_path.glob("batch-*.npy"))) == 2
    seen: list[Progress] = []
    embed_paths(
        files,
        lite0,
        batch_size=2,
        num_workers=1,
        checkpoints=_checkpoints(tmp_path, files, lite0, batch_size=2),
        progress=seen.append,
    )
    assert seen[0].done == 4 and seen[-1].done == 8


def test_empty_input_and_preallocated_output(lite0, photo_files):
    assert embed_paths([], lite0).shape == (0, 1280)
    out = np.zeros((3, 1280), dtype=np.float32)
    result = embed_paths(photo_files[:3], lite0, num_workers=0, out=out)
    assert result is out and np.abs(out).sum() > 0
    with pytest.raises(ValueError, match="float32"):
        embed_paths(photo_files[:3], lite0, out=np.zeros((3, 1280)))


def test_default_workers_leave_cores_to_the_model():
    assert default_num_workers("cpu") == 0
    assert default_num_workers("cuda") >= 1


@pytest.mark.slow
def test_resume_after_kill_reuses_finished_batches(lite0, photo_files, tmp_path):
    """SIGKILL a run once some batches are checkpointed; the rerun keeps them and agrees with a clean run."""
    files = [str(p) for p in photo_files[:12]] * 2
    list_file = tmp_path / "files.json"
    list_file.write_text(json.dumps(files))
    partial = tmp_path / "partial"
    script = textwrap.dedent(
        f"""
        import json, torch
        torch.set_num_threads(1)
        from shoal.embedding import checkpoint_manifest, create_model, embed_paths
        from shoal.store import BatchCheckpoints
        files = json.load(open({str(list_file)!r}))
        model = create_model()
        manifest = checkpoint_manifest(files, model, batch_size=2, precision="fp32")
        embed_paths(files, model, batch_size=2, num_workers=1, precision="fp32",
                    checkpoints=BatchCheckpoints({str(partial)!r}, manifest))
        print("FINISHED")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(partial.glob("batch-*.npy"))) < 3:
            assert process.poll() is None, (
                process.stderr.read().decode()[-2000:] if process.stderr else ""
            )
            assert time.monotonic() < deadline, "no checkpoints within 180 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    finished = len(list(partial.glob("batch-*.npy")))
    total_batches = len(files) // 2
    assert 3 <= finished < total_batches

    seen: list[Progress] = []
    resumed = embed_paths(
        files,
        lite0,
        batch_size=2,
        num_workers=1,
        precision="fp32",
        checkpoints=_checkpoints(partial, files, lite0, batch_size=2, precision="fp32"),
        progress=seen.append,
    )
    assert seen[0].done == 2 * finished
    assert len(seen) == 1 + total_batches - finished
    clean = embed_paths(files, lite0, batch_size=2, num_workers=1, precision="fp32")
    assert cosine(resumed, clean).min() > 0.99999
    np.testing.assert_allclose(resumed, clean, rtol=1e-3, atol=1e-4)


def test_folding_batchnorm_keeps_the_fp32_output(photo_files):
    from shoal.embedding import create_model
    from shoal.embedding.inference import fold_batchnorm

    plain, folded = create_model(), create_model()
    assert fold_batchnorm(folded) == 49  # every conv + BatchNorm pair of EfficientNet-Lite0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pixels = torch.from_numpy(
        np.stack([resize_crop(load_image(p), plain.data_config) for p in photo_files[:4]])
    )
    inputs = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        torch.testing.assert_close(folded(inputs), plain(inputs), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            folded.feature_map(inputs), plain.feature_map(inputs), rtol=1e-4, atol=1e-4
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_matches_cpu_fp32(lite0, photo_files):
    from shoal.embedding import create_model

    gpu_model = create_model(device="cuda")
    assert resolve_precision("auto", gpu_model.device) == "fp16"
    reference = embed_paths(photo_files, lite0, batch_size=8, num_workers=0, precision="fp32")
    fast = embed_paths(photo_files, gpu_model, batch_size=8)
    similarity = cosine(reference, fast)
    assert similarity.mean() >= 0.999 and similarity.min() >= 0.995


# --------------------------------------------------------------------------- decoding ahead


def test_decoding_ahead_keeps_order_raises_where_it_failed_and_stops_when_closed():
    import threading

    from shoal.embedding.pipeline import prefetched

    def numbers(stop_at=None, closed=None):
        try:
            for value in range(10):
                if value == stop_at:
                    raise OSError(f"disk gone at {value}")
                yield value
        finally:
            if closed is not None:
                closed.set()

    assert list(prefetched(numbers(), 2)) == list(range(10))

    seen = []
    with pytest.raises(OSError, match="disk gone at 4"):
        for value in prefetched(numbers(stop_at=4), 2):
            seen.append(value)
    assert seen == [0, 1, 2, 3]  # every item before the failure arrives, in order

    closed = threading.Event()
    ahead = prefetched(numbers(closed=closed), 2)
    assert next(ahead) == 0
    ahead.close()  # e.g. a cancelled embed: the producer stops and closes its source
    assert closed.is_set()
    assert not any(t.name == "shoal-decode-ahead" for t in threading.enumerate())
