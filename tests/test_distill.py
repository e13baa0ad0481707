"""Distillation: the loss against hand-worked values, and a real tiny student taught by a real
trained checkpoint (the shared tiny run) on the bundled radiographs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from engine.model.device import plain_policy
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from training import train
from training.losses import DistillationLoss
from tests.test_training import SAMPLE, single_thread, tiny_args, train_tiny_run


def test_the_soft_term_is_the_cross_entropy_to_the_teacher():
    logits = torch.zeros(1, 2)                      # the student says 0.5 / 0.5
    teacher = torch.tensor([[0.25, 0.75]])
    label = torch.tensor([1])
    only_soft = DistillationLoss(nn.CrossEntropyLoss(), weight=1.0)
    assert only_soft(logits, label, teacher).item() == pytest.approx(math.log(2))
    only_hard = DistillationLoss(nn.CrossEntropyLoss(), weight=0.0)
    logits = torch.tensor([[0.0, math.log(3)]])     # 0.25 / 0.75
    assert only_hard(logits, label, teacher).item() == pytest.approx(-math.log(0.75))
    half = DistillationLoss(nn.CrossEntropyLoss(), weight=0.5)
    soft = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert half(logits, label, teacher).item() == pytest.approx(0.5 * -math.log(0.75) + 0.5 * soft)


def test_class_weights_give_each_class_its_share_of_the_soft_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    plain = DistillationLoss(nn.CrossEntropyLoss(), 1.0)(logits, labels, teacher)
    weighted = DistillationLoss(nn.CrossEntropyLoss(), 1.0, torch.tensor([3.0, 1.0]))(logits, labels, teacher)
    assert weighted.item() == pytest.approx(plain.item())   # both images cost the same here
    teacher = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    a = -(0.9 * torch.log_softmax(logits[0], 0)[0] + 0.1 * torch.log_softmax(logits[0], 0)[1]).item()
    b = -(torch.log_softmax(logits[1], 0) * 0.5).sum().item()
    weighted = DistillationLoss(nn.CrossEntropyLoss(), 1.0, torch.tensor([3.0, 1.0]))(logits, labels, teacher)
    assert weighted.item() == pytest.approx((3 * a + b) / 4)
    with pytest.raises(ValueError):
        DistillationLoss(nn.CrossEntropyLoss(), 1.5)


def test_a_student_learns_from_a_trained_teacher_and_its_card_names_it(tmp_path_factory, tmp_path):
    teacher = train_tiny_run(tmp_path_factory.getbasetemp()) / "best"
    with single_thread():
        student = train.main(tiny_args(tmp_path / "student", "--distill-from", str(teacher),
                                       "--distill-weight", "0.7"))
    card = json.loads((student / "model_card.json").read_text())
    distilled = card["training"]["distillation"]
    assert distilled["teacher"] == str(teacher) and distilled["weight"] == 0.7
    assert len(distilled["teacher_weights_sha256"]) == 64
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train_loss"]) for r in rows) and len(rows) == 2
    with single_thread():
        scored = list(Predictor.from_checkpoint(student, policy=plain_policy()).predict_stream(iter_inputs([SAMPLE])))
    assert scored and all(p.ok and 0.0 <= p.probability <= 1.0 for p in scored)


def test_a_teacher_that_sees_another_input_or_is_missing_is_refused_with_a_message(tmp_path_factory, tmp_path):
    teacher = train_tiny_run(tmp_path_factory.getbasetemp()) / "best"
    with single_thread():
        with pytest.raises(SystemExit, match="differs from the student's"):
            train.main(tiny_args(tmp_path / "a", "--distill-from", str(teacher), "--image-size", "96"))
        with pytest.raises(SystemExit, match="--distill-from: .*no model_card.json"):
            train.main(tiny_args(tmp_path / "b", "--distill-from", str(tmp_path)))
        with pytest.raises(SystemExit, match="--distill-weight must lie between 0 and 1"):
            train.main(tiny_args(tmp_path / "c", "--distill-from", str(teacher), "--distill-weight", "1.5"))
