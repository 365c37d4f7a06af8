"""The intent model: trained on logged impressions, exported to ONNX.

Features of an (event, candidate ad) pair, for user vector u, context vector c,
ad vector a (all D-d) and device type d:  [u * a, c * a, one_hot(d, 5)].
A one-hidden-layer MLP (scikit-learn) maps them to P(intent), calibrated inside the
graph by Platt scaling when its expected calibration error is above CALIBRATION_TARGET
(bids price P as a probability).

The exported graph computes the same thing for a whole batch, taking the
candidates as ad rows and gathering their embeddings itself, so no [B, K, D]
array is ever built in Python:

    inputs   user     float32[B, D]   user embedding (zeros for unknown users)
             context  float32[B, D]   context embedding
             device   int64[B]        adbid.v1.DeviceType value, 0..4
             cand_ad  int64[B, K]     ad rows from retrieval; -1 = none (scored, then ignored)
    output   p_intent float32[B, K]
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_DEVICE_TYPES = 5
OPSET = 17
INPUTS = {"user": (TensorProto.FLOAT, 2), "context": (TensorProto.FLOAT, 2),
          "device": (TensorProto.INT64, 1), "cand_ad": (TensorProto.INT64, 2)}
OUTPUT = "p_intent"
AD_TABLE = "ad_embeddings"
CALIBRATION_TARGET = 0.01  # expected calibration error above which the model is calibrated


def pair_features(user: np.ndarray, context: np.ndarray, ad: np.ndarray,
                  device: np.ndarray) -> np.ndarray:
    """Training features, float32[N, 2D + 5], for N pairs (float32[N, D] x3, int64[N])."""
    one_hot = np.eye(N_DEVICE_TYPES, dtype=np.float32)[device]
    return np.concatenate([user * ad, context * ad, one_hot], axis=1).astype(np.float32)


def reliability(p: np.ndarray, clicked: np.ndarray, bins: int = 10) -> dict:
    """Calibration of probabilities `p` against outcomes: the reliability curve over bins
    of equal count (mean predicted, observed rate, count each) and the expected
    calibration error, the count-weighted mean of |predicted - observed| over the bins."""
    order = np.argsort(p, kind="stable")
    curve, ece = [], 0.0
    for part in np.array_split(order, bins):
        if not len(part):
            continue
        predicted, observed = float(p[part].mean()), float(clicked[part].mean())
        curve.append([round(predicted, 6), round(observed, 6), len(part)])
        ece += len(part) / len(p) * abs(predicted - observed)
    return {"ece": ece, "curve": curve}


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def fit_platt(p: np.ndarray, clicked: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (a, b) such that sigmoid(a * logit(p) + b) is calibrated on these
    outcomes (a logistic regression on the logit)."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6).fit(logit(p)[:, None], clicked)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def export_mlp(coefs: list[np.ndarray], intercepts: list[np.ndarray],
               ad_embeddings: np.ndarray,
               platt: tuple[float, float] = (1.0, 0.0)) -> onnx.ModelProto:
    """Write a trained one-hidden-layer ReLU MLP with a logistic output as the batch graph.

    coefs/intercepts: scikit-learn MLPClassifier.coefs_ / intercepts_ (W1 [2D+5, H], W2 [H, 1]).
    ad_embeddings: float32[A, D], baked into the graph as the candidate table.
    platt: (a, b), the calibration inside the graph: P = sigmoid(a * logit + b).
    """
    w1, w2 = (np.asarray(c, dtype=np.float32) for c in coefs)
    b1, b2 = (np.asarray(b, dtype=np.float32) for b in intercepts)
    d = ad_embeddings.shape[1]
    if w1.shape[0] != 2 * d + N_DEVICE_TYPES or w2.shape[1] != 1:
        raise ValueError(f"MLP shapes {w1.shape}, {w2.shape} do not fit d={d}")
    init = [
        numpy_helper.from_array(np.ascontiguousarray(ad_embeddings, dtype=np.float32), AD_TABLE),
        numpy_helper.from_array(w1[:d], "w_user"),
        numpy_helper.from_array(w1[d:2 * d], "w_context"),
        numpy_helper.from_array(w1[2 * d:], "w_device"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(platt[0], dtype=np.float32), "platt_a"),
        numpy_helper.from_array(np.array(platt[1], dtype=np.float32), "platt_b"),
    ]
    n = helper.make_node
    nodes = [
        n("Max", ["cand_ad", "zero"], ["ad_row"]),  # -1 (no candidate) scores ad 0; ignored later
        n("Gather", [AD_TABLE, "ad_row"], ["ads"], axis=0),  # [B, K, D]
        n("Unsqueeze", ["user", "axis1"], ["user3"]),  # [B, 1, D]
        n("Unsqueeze", ["context", "axis1"], ["context3"]),
        n("Mul", ["user3", "ads"], ["ua"]),
        n("Mul", ["context3", "ads"], ["ca"]),
        n("MatMul", ["ua", "w_user"], ["h_user"]),  # [B, K, H]
        n("MatMul", ["ca", "w_context"], ["h_context"]),
        n("Gather", ["w_device", "device"], ["h_device"], axis=0),  # [B, H]
        n("Unsqueeze", ["h_device", "axis1"], ["h_device3"]),
        n("Add", ["h_user", "h_context"], ["h_sum1"]),
        n("Add", ["h_sum1", "h_device3"], ["h_sum2"]),
        n("Add", ["h_sum2", "b1"], ["h_pre"]),
        n("Relu", ["h_pre"], ["h"]),
        n("MatMul", ["h", "w2"], ["logit3"]),  # [B, K, 1]
        n("Add", ["logit3", "b2"], ["logit3b"]),
        n("Squeeze", ["logit3b", "axis2"], ["logit"]),
        n("Mul", ["logit", "platt_a"], ["logit_a"]),  # calibration (identity by default)
        n("Add", ["logit_a", "platt_b"], ["logit_cal"]),
        n("Sigmoid", ["logit_cal"], [OUTPUT]),
    ]
    dims = {1: ["batch"], 2: ["batch", "k"]}
    inputs = [helper.make_tensor_value_info(name, t, dims[r] if name in ("device", "cand_ad")
                                            else ["batch", d]) for name, (t, r) in INPUTS.items()]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "k"])]
    graph = helper.make_graph(nodes, "adbid_intent", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="adbid")
    model.ir_version = 9  # readable by onnxruntime >= 1.16
    onnx.checker.check_model(model)
    return model
