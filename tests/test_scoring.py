import numpy as np
import onnx
import pytest

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


def test_cuda_scores_equal_the_cpu_scores(tiny_world):
    """Runs where onnxruntime-gpu finds a GPU (the CUDA provider); skipped elsewhere."""
    try:
        gpu = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal,
                     require_gpu=True)
    except GpuUnavailableError as exc:  # no onnxruntime-gpu, or no GPU and libraries for it
        pytest.skip(str(exc))
    cpu = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal, use_gpu=False)
    assert (gpu.provider, cpu.provider) == (CUDA, CPU)
    for b in (1, 7, 300):
        inputs = random_inputs(tiny_world, b=b, k=16, seed=b)
        got = gpu.score(*inputs)
        assert got.shape == (b, 16) and got.dtype == np.float32
        # TF32 matrix products on the GPU: about three decimal digits.
        np.testing.assert_allclose(got, cpu.score(*inputs), rtol=2e-3, atol=1e-4)


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
