import numpy as np
import onnx
import pytest

from adbid import intent_model
from adbid.scoring import CPU, CUDA, GpuUnavailableError, ModelError, Scorer, choose_providers


def numpy_mlp(model: onnx.ModelProto, user, context, device, cand_ad):
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    ads = w[intent_model.AD_TABLE][np.maximum(cand_ad, 0)]
    h = (user[:, None] * ads) @ w["w_user"] + (context[:, None] * ads) @ w["w_context"]
    h = np.maximum(h + w["w_device"][device][:, None] + w["b1"], 0)
    return 1 / (1 + np.exp(-((h @ w["w2"])[..., 0] + w["b2"][0])))


def test_scores_equal_the_mlp_computed_in_numpy(tiny_world):
    s = Scorer(tiny_world.model_path, tiny_world.dim, tiny_world.ad_index.ntotal)
    rng = np.random.default_rng(0)
    b, k, d = 7, 5, tiny_world.dim
    user = rng.standard_normal((b, d)).astype(np.float32)
    ctx = rng.standard_normal((b, d)).astype(np.float32)
    device = rng.integers(0, 5, b).astype(np.int64)
    cand = rng.integers(0, tiny_world.ad_index.ntotal, (b, k)).astype(np.int64)
    got = s.score(user, ctx, device, cand)
    want = numpy_mlp(onnx.load(str(tiny_world.model_path)), user, ctx, device, cand)
    assert got.shape == (b, k) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert s.provider == CPU


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
