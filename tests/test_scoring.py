import numpy as np
import onnx
import pytest

from adbid.stages.device_io import DeviceIO, padded_rows
from adbid.stages.scoring import (
    CPU,
    CUDA,
    GpuUnavailableError,
    ModelError,
    Scorer,
    choose_providers,
)
from adbid.world import intent_model


def numpy_mlp(model: onnx.ModelProto, user, context, device, cand_ad):
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    ads = w[intent_model.AD_TABLE][np.maximum(cand_ad, 0)]
    h = (user[:, None] * ads) @ w["w_user"] + (context[:, None] * ads) @ w["w_context"]
    h = np.maximum(h + w["w_device"][device][:, None] + w["b1"], 0)
    logit = (h @ w["w2"])[..., 0] + w["b2"][0]
    return 1 / (1 + np.exp(-(w["platt_a"] * logit + w["platt_b"])))  # calibrated


def random_inputs(world, b=7, k=5, seed=0):
    rng = np.random.default_rng(seed)
    d = world.dim
    return (rng.standard_normal((b, d)).astype(np.float32),
            rng.standard_normal((b, d)).astype(np.float32),
            rng.integers(0, 5, b).astype(np.int64),
            rng.integers(0, world.ad_index.ntotal, (b, k)).astype(np.int64))


def test_scores_equal_the_mlp_computed_in_numpy(tiny_world):
    s = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal, use_gpu=False)
    inputs = random_inputs(tiny_world)
    got = s.score(*inputs)
    want = numpy_mlp(onnx.load(str(tiny_world.model_path)), *inputs)
    assert got.shape == inputs[3].shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert s.provider == CPU


def test_two_intra_op_threads_score_as_the_numpy_mlp(tiny_world):
    """With --onnx-threads 2 onnxruntime's pool threads flush subnormals (its own option);
    the scores of a larger batch, split across the threads, match the numpy MLP still."""
    s = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal,
               intra_op_threads=2, use_gpu=False)
    inputs = random_inputs(tiny_world, b=256, k=16, seed=3)
    want = numpy_mlp(onnx.load(str(tiny_world.model_path)), *inputs)
    np.testing.assert_allclose(s.score(*inputs), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gpu_io", ["graph", "bind", "plain"])
def test_cuda_scores_equal_the_cpu_scores(tiny_world, gpu_io):
    """Runs where onnxruntime-gpu finds a GPU (the CUDA provider); skipped elsewhere. Each
    way of moving the inputs (captured graphs, bound buffers, onnxruntime's copies), over
    batch sizes that reuse a padded shape after a larger batch left rows in it."""
    try:
        gpu = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal,
                     require_gpu=True, gpu_io=gpu_io, warm=(16, 256))
    except GpuUnavailableError as exc:  # no onnxruntime-gpu, or no GPU and libraries for it
        pytest.skip(str(exc))
    cpu = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal, use_gpu=False)
    assert (gpu.provider, cpu.provider) == (CUDA, CPU)
    assert gpu.gpu_io in ((gpu_io,) if gpu_io != "graph" else ("graph", "bind"))
    for i, b in enumerate((1, 7, 300, 260, 300, 5, 7, 7, 7, 7)):  # replays: fresh inputs
        inputs = random_inputs(tiny_world, b=b, k=16, seed=i)
        got = gpu.score(*inputs)
        assert got.shape == (b, 16) and got.dtype == np.float32
        # TF32 matrix products on the GPU: about three decimal digits (3.1e-3 relative seen
        # on an H200 over these inputs).
        np.testing.assert_allclose(got, cpu.score(*inputs), rtol=5e-3, atol=1e-4)


def test_signature_is_checked_against_the_world(tiny_world):
    with pytest.raises(ModelError, match="dimension"):
        Scorer(tiny_world.model_path, tiny_world.dim + 1, tiny_world.ad_index.ntotal)
    with pytest.raises(ModelError, match="ad table"):
        Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal + 1)


def test_provider_choice():
    assert choose_providers([CUDA, CPU], use_gpu=True) == [CUDA, CPU]
    assert choose_providers([CUDA, CPU], use_gpu=False) == [CPU]
    assert choose_providers([CPU], use_gpu=True) == [CPU]


def test_require_gpu_refuses_the_cpu_fallback(tiny_world):
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(GpuUnavailableError, match="CPUExecutionProvider"):
        Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal,
               require_gpu=True)


def test_bound_buffers_score_every_batch_size_as_a_plain_run(tiny_world):
    """Device I/O (here on the CPU, as the same onnxruntime binding runs on CUDA): batches
    padded to a few fixed shapes, larger ones first so that smaller ones run over rows an
    earlier batch left behind, give exactly the scores of an unbound run."""
    s = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal, use_gpu=False)
    io = DeviceIO(s.session, tiny_world.dim, device="cpu")
    io.warm(8, 40)  # shapes made ahead: 16, 32, 64
    assert sorted(rows for rows, _ in io.shapes) == [16, 32, 64]
    # Host staging arrays start on pages of their own (CUDA page-locks them one by one).
    assert all(a.ctypes.data % 4096 == 0 for a in io.shapes[16, 8].host.values())
    for seed, b in enumerate((300, 17, 16, 1, 64, 200, 3)):
        inputs = random_inputs(tiny_world, b=b, k=8, seed=seed)
        got = io.score(*inputs)
        assert got.shape == (b, 8)
        np.testing.assert_array_equal(got, s.score(*inputs))
    assert sorted(rows for rows, _ in io.shapes) == [16, 32, 64, 256, 512]
    kept = io.score(*random_inputs(tiny_world, b=5, k=8, seed=9))
    before = kept.copy()
    io.score(*random_inputs(tiny_world, b=5, k=8, seed=10))
    np.testing.assert_array_equal(kept, before)  # an answer is not the next batch's buffer
    assert padded_rows(0) == padded_rows(16) == 16 and padded_rows(17) == 32
