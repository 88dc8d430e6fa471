"""Loss terms and teacher confidence against values computed by hand."""

import math

import pytest
import torch

from g2d.core.losses import (
    feature_distillation,
    logit_distillation,
    task_loss,
    teacher_confidence,
)
from g2d.methods import build_method
from g2d.methods.base import TeacherOutputs
from g2d.models.multimodal import ModelOutput


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    expected = -(math.log(softmax([2.0, 0.0, -1.0])[0]) + math.log(softmax([0.5, 0.5, 0.0])[2])) / 2
    assert task_loss(logits, labels, "classification").item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mse_of_sigmoid():
    logits = torch.tensor([[0.0], [2.0]])
    targets = torch.tensor([0.25, 1.0])
    sig2 = 1 / (1 + math.exp(-2.0))
    expected = ((0.5 - 0.25) ** 2 + (sig2 - 1.0) ** 2) / 2
    assert task_loss(logits, targets, "regression").item() == pytest.approx(expected, rel=1e-6)


def test_feature_distillation_is_mean_squared_error():
    student = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    teacher = {"a": torch.tensor([[0.0, 2.0], [3.0, 6.0]])}
    assert feature_distillation(student, teacher)["a"].item() == pytest.approx((1 + 0 + 0 + 4) / 4)


def test_feature_distillation_sum_is_eq2_as_written():
    """Squared L2 norm summed over feature dimensions, then the batch mean: ((1 + 0) + (0 + 4)) / 2."""
    student = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    teacher = {"a": torch.tensor([[0.0, 2.0], [3.0, 6.0]])}
    assert feature_distillation(student, teacher, "sum")["a"].item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="l2"):
        feature_distillation(student, teacher, "l2")


def test_kl_direction_and_temperature_by_hand():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    for temperature in (1.0, 2.0):
        p = softmax([0.0 / temperature, 2.0 / temperature])  # teacher
        q = softmax([1.0 / temperature, 0.0 / temperature])  # student
        expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * temperature**2
        got = logit_distillation(student, {"a": teacher}, "classification", temperature)["a"].item()
        assert got == pytest.approx(expected, rel=1e-5)


def test_kl_is_batch_mean():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    p, q = softmax([0.0, 2.0]), softmax([1.0, 0.0])
    first = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = logit_distillation(student, {"a": teacher}, "classification")["a"].item()
    assert got == pytest.approx(first / 2, rel=1e-5)


def test_teacher_confidence_is_mean_true_class_probability():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 0.0]]])  # [k=2, B=2, C=2]
    labels = torch.tensor([0, 1])
    a = (softmax([2.0, 0.0])[0] + softmax([0.0, 1.0])[1]) / 2
    b = (softmax([0.0, 0.0])[0] + softmax([3.0, 0.0])[1]) / 2
    assert teacher_confidence(logits, labels, "classification").tolist() == pytest.approx([a, b], rel=1e-6)


def test_regression_confidence_is_one_minus_mean_absolute_error():
    logits = torch.tensor([[[0.0], [0.0]]])  # sigmoid 0.5
    targets = torch.tensor([0.25, 1.0])
    assert teacher_confidence(logits, targets, "regression").tolist() == pytest.approx([1 - (0.25 + 0.5) / 2])


def make_outputs():
    features = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0, 2.0]])}
    output = ModelOutput(features=features, logits=torch.tensor([[1.0, 0.0]]), modality_logits={})
    teachers = TeacherOutputs(
        features={"a": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([[0.0, 0.0, 0.0]])},
        logits={"a": torch.tensor([[0.0, 2.0]]), "b": torch.tensor([[1.0, 1.0]])},
    )
    return output, {"label": torch.tensor([0])}, teachers


def test_g2d_total_is_eq4_by_hand():
    output, batch, teachers = make_outputs()
    student = -math.log(softmax([1.0, 0.0])[0])
    feature = 1 / 2 + 5 / 3
    q = softmax([1.0, 0.0])
    kl = lambda p: sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))  # noqa: E731
    logit = kl(softmax([0.0, 2.0])) + kl(softmax([1.0, 1.0]))
    method = build_method({"name": "g2d", "g2d": {"alpha": 0.5, "beta": 2.0}}, "classification", ["a", "b"])
    loss, terms = method.loss(output, batch, teachers)
    assert terms["feature"].item() == pytest.approx(feature, rel=1e-6)
    assert terms["logit"].item() == pytest.approx(logit, rel=1e-5)
    assert loss.item() == pytest.approx(student + 0.5 * feature + 2.0 * logit, rel=1e-5)


def test_umt_and_joint_by_hand():
    output, batch, teachers = make_outputs()
    student = -math.log(softmax([1.0, 0.0])[0])
    umt = build_method({"name": "umt", "umt": {"feature_weight": 10.0}}, "classification", ["a", "b"])
    assert umt.loss(output, batch, teachers)[0].item() == pytest.approx(student + 10 * (1 / 2 + 5 / 3), rel=1e-5)
    joint = build_method({"name": "joint"}, "classification", ["a", "b"])
    assert joint.loss(output, batch, None)[0].item() == pytest.approx(student, rel=1e-6)


def test_feature_reduction_sum_in_g2d_and_umt_by_hand():
    """The same outputs as above: per-row squared errors sum to 1 (a, D=2) and 5 (b, D=3), one row."""
    output, batch, teachers = make_outputs()
    g2d = build_method({"name": "g2d", "g2d": {"feature_reduction": "sum"}}, "classification", ["a", "b"])
    assert g2d.loss(output, batch, teachers)[1]["feature"].item() == pytest.approx(1 + 5, rel=1e-6)
    umt = build_method({"name": "umt", "umt": {"feature_reduction": "sum"}}, "classification", ["a", "b"])
    assert umt.loss(output, batch, teachers)[1]["feature"].item() == pytest.approx(1 + 5, rel=1e-6)
